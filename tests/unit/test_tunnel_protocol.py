"""The frames of interactive sessions (`corral.core.tunnel`), and the server's session
bookkeeping (`corral.server.tunnels.TunnelHub`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from collections.abc import Coroutine
from typing import Any

import pytest
from pydantic import ValidationError

from corral.core import tunnel as wire
from corral.core.tunnel import TerminalStart
from corral.server.api.ports import forwarded_headers, strip_cookie
from corral.server.tunnels import Tunnel, TunnelHub, TunnelTimeout

# ---------------------------------------------------------------- data


@pytest.mark.parametrize("channel", [wire.STDIN, wire.STDOUT, wire.STDERR])
@pytest.mark.parametrize("data", [b"", b"ls -l\r", bytes(range(256))])
def test_data_messages_round_trip(channel: int, data: bytes) -> None:
    message = wire.data_message(channel, data)
    assert message[0] == channel and len(message) == len(data) + 1
    assert wire.parse_data(message) == (channel, data)


@pytest.mark.parametrize("message", [b"", b"\x03abc", b"\xff"])
def test_bad_data_messages_are_refused(message: bytes) -> None:
    with pytest.raises(wire.ProtocolError):
        wire.parse_data(message)
    with pytest.raises(wire.ProtocolError):
        wire.data_message(3, b"x")


# ---------------------------------------------------------------- control


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (wire.resize(40, 120), wire.Control("resize", rows=40, cols=120)),
        (wire.EOF, wire.Control("eof")),
        (wire.exit_message(130), wire.Control("exit", code=130)),
        ('{"type": "exit", "code": null}', wire.Control("exit", code=None)),
        (wire.error_message("no such job"), wire.Control("error", message="no such job")),
        ('{"type": "start", "command": ["sh"]}', wire.Control("start")),
    ],
)
def test_control_messages_round_trip(text: str, expected: wire.Control) -> None:
    assert wire.parse_control(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "known 'type'"),
        ('{"type": "shutdown"}', "known 'type'"),
        ('{"type": "resize", "rows": 0, "cols": 80}', "rows and cols must be 1..10000"),
        ('{"type": "resize", "rows": 24}', "rows and cols must be 1..10000"),
        ('{"type": "resize", "rows": true, "cols": 80}', "rows and cols"),
        ('{"type": "resize", "rows": 24, "cols": 100000}', "rows and cols"),
        ('{"type": "exit", "code": "1"}', "code must be an integer"),
    ],
)
def test_bad_control_messages_are_refused(text: str, why: str) -> None:
    with pytest.raises(wire.ProtocolError, match=why):
        wire.parse_control(text)


def run(scenario: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run(scenario)`` in a thread of its own: in the whole suite the browser
    tests' Playwright (sync API) keeps an event loop running in the main thread."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, scenario).result()


def test_control_messages_are_compact_json() -> None:
    assert json.loads(wire.resize(2, 3)) == {"type": "resize", "rows": 2, "cols": 3}
    with pytest.raises(wire.ProtocolError):
        wire.control("reboot")


def test_terminal_start_checks_what_it_is_given() -> None:
    start = TerminalStart.model_validate_json('{"type": "start"}')
    assert (start.command, start.tty, start.rows, start.cols) == (None, True, 24, 80)
    assert start.term == "xterm-256color"
    for bad in (
        {"command": []},
        {"rows": 0},
        {"cols": 10001},
        {"term": "xterm; rm -rf /"},
        {"shell": "bash"},
    ):
        with pytest.raises(ValidationError):
            TerminalStart.model_validate(bad)


def test_urls() -> None:
    assert wire.port_path(42, 8888) == "/jobs/42/ports/8888/"
    assert wire.websocket_url("http://h:8420", "/api/v1/x") == "ws://h:8420/api/v1/x"
    assert wire.websocket_url("https://h/", "/api/v1/x") == "wss://h/api/v1/x"


# ---------------------------------------------------------------- the hub


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _open(hub: TunnelHub, node: int = 1, **fields: Any) -> Tunnel:
    values: dict[str, Any] = {
        "kind": "terminal",
        "job_id": 7,
        "attempt": 2,
        "rank": 0,
        "user": "alice",
        "start": TerminalStart(),
    }
    values.update(fields)
    return hub.open(node, f"n{node}", **values)


def test_offers_are_handed_to_their_node_once() -> None:
    async def scenario() -> None:
        hub = TunnelHub()
        t1 = _open(hub, node=1)
        t2 = _open(hub, node=2, kind="port", start=None, port=8888)
        assert t1.id != t2.id and len(t1.id) >= 20  # unguessable
        assert [o.id for o in await hub.offers(1, 0)] == [t1.id]
        assert await hub.offers(1, 0) == []
        [offer] = await hub.offers(2, 0)
        assert (offer.kind, offer.port, offer.job_id, offer.attempt) == ("port", 8888, 7, 2)
        assert len(hub) == 2

    run(scenario())


def test_a_waiting_poll_is_woken_by_a_new_session() -> None:
    async def scenario() -> None:
        hub = TunnelHub()
        poll = asyncio.create_task(hub.offers(1, 30))
        await asyncio.sleep(0)  # the poll is waiting now
        t = _open(hub)
        offers = await asyncio.wait_for(poll, 5)
        assert [o.id for o in offers] == [t.id]

    run(scenario())


def test_a_poll_that_hangs_up_leaves_its_offers_for_the_next() -> None:
    async def scenario() -> None:
        hub = TunnelHub()
        gone = asyncio.Event()
        poll = asyncio.create_task(hub.offers(1, 30, hangup=gone.wait))
        await asyncio.sleep(0)
        gone.set()
        assert await asyncio.wait_for(poll, 5) == []
        t = _open(hub)
        assert [o.id for o in await hub.offers(1, 0)] == [t.id]

    run(scenario())


def test_only_the_sessions_node_may_claim_it_and_only_once() -> None:
    async def scenario() -> None:
        hub = TunnelHub()
        t = _open(hub, node=1)
        assert hub.claim(t.id, node_id=2) is None
        assert hub.claim("no-such-session", node_id=1) is None
        assert hub.claim(t.id, node_id=1) is t
        assert hub.claim(t.id, node_id=1) is None
        agent: Any = object()
        hub.attach(t, agent)
        assert await hub.connect(t) is agent
        hub.close(t)
        assert len(hub) == 0 and t.finished.is_set()
        hub.close(t)  # idempotent

    run(scenario())


def test_a_session_the_agent_never_dials_times_out_and_is_withdrawn() -> None:
    async def scenario() -> None:
        clock = Clock()
        hub = TunnelHub(dial_timeout=0.05, clock=clock)
        t = _open(hub)
        with pytest.raises(TunnelTimeout, match="has not asked the server for sessions"):
            await hub.connect(t)
        assert len(hub) == 0 and await hub.offers(1, 0) == []
        assert hub.claim(t.id, 1) is None  # a late dial finds nothing
        clock.now = 200.0  # the node polls, then goes quiet for 42 s
        await hub.offers(1, 0)
        clock.now = 242.0
        with pytest.raises(TunnelTimeout) as late:
            await hub.connect(_open(hub))
        assert str(late.value) == (
            "the agent of node n1 did not connect back for this session within 0.05 s: "
            "it last asked the server for sessions 42 s ago"
        )

    run(scenario())


def test_closing_a_session_withdraws_its_undelivered_offer() -> None:
    async def scenario() -> None:
        hub = TunnelHub()
        t1, t2 = _open(hub), _open(hub)
        hub.close(t1)
        assert [o.id for o in await hub.offers(1, 0)] == [t2.id]

    run(scenario())


# ---------------------------------------------------------------- the port proxy's headers


def test_the_servers_credentials_never_reach_the_job() -> None:
    from starlette.requests import Request

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/jobs/4/ports/8888/lab",
        "raw_path": b"/jobs/4/ports/8888/lab",
        "query_string": b"",
        "scheme": "https",
        "server": ("corral.example", 443),
        "client": ("10.0.0.9", 5555),
        "headers": [
            (b"host", b"corral.example"),
            (b"authorization", b"Bearer crl_secret"),
            (b"cookie", b"_xsrf=abc; corral_session=crl_secret; username-x=y"),
            (b"connection", b"keep-alive"),
            (b"x-forwarded-for", b"6.6.6.6"),
            (b"accept", b"text/html"),
        ],
    }
    headers = forwarded_headers(Request(scope), 4, 8888)
    text = repr(headers)
    assert "crl_secret" not in text and "6.6.6.6" not in text
    assert ("cookie", "_xsrf=abc; username-x=y") in headers
    assert ("host", "corral.example") in headers and ("accept", "text/html") in headers
    assert ("X-Forwarded-Prefix", "/jobs/4/ports/8888") in headers
    assert ("X-Forwarded-Proto", "https") in headers
    assert not any(name.lower() == "connection" for name, _ in headers)
    jupyter = forwarded_headers(
        Request({**scope, "headers": [(b"authorization", b"token jupyter-own")]}), 4, 8888
    )
    assert ("authorization", "token jupyter-own") in jupyter  # the job's own scheme passes
    assert strip_cookie("corral_session=x", "corral_session") == ""


def test_a_stopping_server_ends_the_polls_at_once() -> None:
    """SIGTERM releases the held tunnel and sync polls (they would otherwise hold up
    the graceful shutdown until it cancels them), and later polls do not wait."""
    from corral.server.signals import Signals

    async def scenario() -> None:
        hub, signals = TunnelHub(), Signals()
        signals.attach(asyncio.get_running_loop())
        sync_event = signals.node_event(1)
        poll = asyncio.ensure_future(hub.offers(1, 30))
        await asyncio.sleep(0.05)
        assert not poll.done() and not sync_event.is_set()
        signals.server_stopping(then=hub.release_polls)
        assert await asyncio.wait_for(poll, 2) == []
        await asyncio.wait_for(sync_event.wait(), 2)
        assert signals.node_event(2).is_set()  # a new sync poll does not wait either
        assert await asyncio.wait_for(hub.offers(2, 30), 1) == []

    run(scenario())
