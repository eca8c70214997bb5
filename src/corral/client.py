"""The one HTTP client of Corral, shared by the CLI and the agent.

Errors come back as the same `corral.core.errors` classes the server raised (the API
puts the class's ``code`` in every error body), plus `Unavailable` when the server
cannot be reached. The transport is injectable so tests can talk to an in-process app
(``httpx.ASGITransport``/``httpx.MockTransport``) without sockets.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from corral import __version__
from corral.core.errors import ERRORS_BY_CODE, CorralError, Unauthorized, Unavailable

API_PREFIX = "/api/v1"

M = TypeVar("M", bound=BaseModel)


def _error_from_response(response: httpx.Response) -> CorralError:
    try:
        body = response.json()
        err = body["error"]
        cls = ERRORS_BY_CODE.get(err.get("code", ""), CorralError)
        return cls(str(err.get("message", "")), field=err.get("field"))
    except (ValueError, KeyError, TypeError, AttributeError):
        text = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
        if response.status_code == 401:
            return Unauthorized("the server refused the token")
        return CorralError(f"server answered HTTP {response.status_code}: {text}")


def error_from_status(status: int, body: bytes) -> CorralError:
    """The `CorralError` of an error answer (a refused WebSocket handshake, say)."""
    return _error_from_response(httpx.Response(status, content=body))


class ApiClient:
    """A Corral API client bound to one server and one token (user, node or join token)."""

    def __init__(
        self,
        server: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        headers = {"User-Agent": f"corral/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.server + API_PREFIX,
            headers=headers,
            timeout=timeout,
            transport=transport,
        )

    def set_token(self, token: str) -> None:
        self._http.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send one request; return the decoded JSON body (None for an empty body).

        Raises a `CorralError` subclass for every error answer, `Unavailable` when the
        server cannot be reached.
        """
        response = self._send(
            method,
            path,
            json=json,
            params=params,
            content=content,
            headers=headers,
            timeout=timeout,
        )
        if not response.content:
            return None
        return response.json()

    def exchange(
        self,
        method: str,
        path: str,
        body: BaseModel,
        answer: type[M],
        *,
        timeout: float | None = None,
    ) -> M:
        """Send ``body`` as JSON and return the answer validated as ``answer``; both
        directions in pydantic's own JSON code (the agent's sync, many times a second).
        Raises as `request` does."""
        response = self._send(
            method,
            path,
            content=body.model_dump_json().encode(),
            headers={"Content-Type": "application/json"},
            timeout=timeout,
        )
        return answer.model_validate_json(response.content)

    def _send(
        self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any
    ) -> httpx.Response:
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unavailable(
                f"cannot reach the Corral server at {self.server} ({type(exc).__name__}: "
                f"{exc or 'no answer'})"
            ) from exc
        if response.status_code >= 400:
            raise _error_from_response(response)
        return response

    def get(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return self.request("GET", path, params=clean)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    @contextmanager
    def stream(
        self, path: str, params: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Iterator[Iterator[bytes]]:
        """Stream a response body (used by ``corral logs -f``)."""
        try:
            with self._http.stream(
                "GET",
                path,
                params=params,
                timeout=httpx.Timeout(timeout)
                if timeout is not None
                else httpx.Timeout(30.0, read=None),
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from_response(response)
                yield response.iter_bytes()
        except httpx.TransportError as exc:
            raise Unavailable(f"lost the connection to {self.server} ({exc})") from exc
