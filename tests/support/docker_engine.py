"""A private, throw-away Docker engine for the test suite, and a busybox image for it.

Why not the system's dockerd (``/var/run/docker.sock``)? For the reason the suite has
its own PostgreSQL: the machines are shared. Another user's dockerd may not be
running, may be upgraded or restarted under us, holds other people's containers, and a
test that lists or removes "all containers" there would touch theirs. Instead every
test session starts its own ``dockerd`` with everything of its own in one temp dir D:

* ``-H unix://D/docker.sock`` (the API), ``--data-root D/data`` (images, containers,
  overlay2 layers), ``--exec-root D/exec`` (the containerd that dockerd starts for
  itself, its socket and state, runc's state), ``--pidfile D/dockerd.pid`` and
  ``--config-file D/daemon.json`` (``{}``: no host-wide daemon.json applies);
* ``--iptables=false --bridge=none``: no ``docker0`` interface, no NAT rules on the
  shared host. Containers use ``network_mode="none"`` or ``"host"``;
* ``--cgroup-parent /corral-dk-…``: every container's cgroups (cgroup v1 here) live
  under a parent that is ours alone, so :meth:`DockerEngine.stop` can find and kill any
  container process that outlived the daemon, and removes those (empty) cgroups.

D lives directly under ``/tmp`` with a short name, because Unix socket paths are
limited to 108 bytes and containerd puts several sockets under the exec root.

The daemon needs root, ``/usr/sbin/dockerd`` (Debian's ``docker.io``, with containerd
and runc) and, for the test image, ``/bin/busybox`` (``busybox-static``); both are
installed by ``scripts/test-services.sh``. It comes up in well under a second.

What the daemon still shares with the host (Docker 20.10 has no flag for these, and
none of it can disturb another daemon): ``/etc/docker/key.json`` (its identity key,
created once and only read afterwards), ``/run/docker/plugins`` and the shims' sockets
in ``/run/containerd/s/`` (named by a hash that includes our exec root).

:meth:`DockerEngine.stop` removes every container in the engine (it is private, so all
of them are the session's), stops dockerd by PID (SIGTERM, SIGKILL after a grace),
then kills whatever of ours outlived it -- its containerd (from its pidfile), the
containerd shims (whose command lines name our exec root), container processes (from
our cgroups) -- unmounts anything left under D and removes D.
:meth:`DockerEngine.leftover_processes` lists anything of ours still running; the
``docker_engine`` fixture in ``tests/conftest.py`` fails the session when it is not
empty.

Typical use::

    with DockerEngine() as engine:      # starts dockerd and imports engine.image
        client = engine.client()
        out = client.containers.run(engine.image, ["echo", "hi"], network_mode="none",
                                    remove=True)

If the engine cannot run here, :class:`DockerUnavailable` is raised; the fixture turns
it into a loud skip (or a failure with ``CORRAL_REQUIRE_DOCKER=1``).
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, NoReturn, Self

import pytest

from support.processes import die_with_parent

if TYPE_CHECKING:
    import docker

DOCKERD_ENV = "CORRAL_TEST_DOCKERD"
"""Set to the path of another ``dockerd`` to use it instead of Debian's."""

DOCKERD = Path(os.environ.get(DOCKERD_ENV) or "/usr/sbin/dockerd")
"""Debian's ``docker.io`` puts the daemon here (with containerd and runc on PATH)."""

BUSYBOX = Path("/bin/busybox")
"""Debian's ``busybox-static``: one static binary, so it runs in an otherwise empty image."""

TEST_IMAGE = "corral-test-busybox:latest"
"""The tag :func:`build_busybox_image` gives the test image by default."""

UNAVAILABLE_PREFIX = "Docker engine NOT available"
"""Every skip for a missing engine starts with this, so the summary can count them."""

INSTALL_HINT = (
    "Fix: run scripts/test-services.sh as root (it runs apt-get install docker.io busybox-static)"
)

REQUIRE_ENV = "CORRAL_REQUIRE_DOCKER"
"""Set to 1 to make a missing Docker engine fail the tests that need it instead of skipping."""

CGROUP_ROOT = Path("/sys/fs/cgroup")


class DockerUnavailable(RuntimeError):
    """A Docker engine cannot be found or started here; tests that need one should skip."""


def unavailable_reason(why: str) -> str:
    """The loud, uniform skip reason for tests that cannot get a Docker engine."""
    return (
        f"{UNAVAILABLE_PREFIX}: {why}, so the Docker job runtime is UNTESTED against a "
        f"real engine. {INSTALL_HINT}."
    )


def docker_required() -> bool:
    """True when ``$CORRAL_REQUIRE_DOCKER`` says a missing engine is an error."""
    return os.environ.get(REQUIRE_ENV, "").lower() not in ("", "0", "false", "no")


def skip_unavailable(exc: DockerUnavailable) -> NoReturn:
    """Skip the current test loudly -- or fail it when ``$CORRAL_REQUIRE_DOCKER`` is set."""
    reason = unavailable_reason(str(exc))
    if docker_required():
        pytest.fail(f"{reason} ({REQUIRE_ENV} is set)")
    pytest.skip(reason)


def check_available() -> None:
    """Raise :class:`DockerUnavailable` saying what is missing, or return when all is there."""
    if not os.access(DOCKERD, os.X_OK):
        raise DockerUnavailable(f"no {DOCKERD} (the Debian package docker.io)")
    if not os.access(BUSYBOX, os.X_OK):
        raise DockerUnavailable(f"no {BUSYBOX} (the Debian package busybox-static)")
    if os.geteuid() != 0:
        raise DockerUnavailable("dockerd needs root, and the tests do not run as root")
    try:
        import docker  # noqa: F401
    except ImportError:
        raise DockerUnavailable(
            "the Python package `docker` is not installed (pip install -e '.[dev]')"
        ) from None


_DIE_WITH_PARENT = die_with_parent(signal.SIGTERM)
_LIVE: set[DockerEngine] = set()


@atexit.register
def _stop_leftovers() -> None:
    """Stop engines whose owner forgot :meth:`DockerEngine.stop` (interpreter exit)."""
    for engine in list(_LIVE):
        engine.stop()


# ---------------------------------------------------------------- processes by PID


def _cmdline(pid: int) -> str:
    """The command line of ``pid`` with spaces for NULs; "" when it is gone (or a zombie)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie has stopped running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _kill_and_wait(pids: list[int], grace: float) -> None:
    """SIGTERM each of ``pids``, wait up to ``grace`` s, SIGKILL the survivors, wait again.

    ``grace=0`` sends SIGKILL at once. These are not our children (shims and container
    processes are reparented to init), so "wait" means polling /proc until each is gone
    or a zombie.
    """
    steps = [(signal.SIGTERM, grace)] if grace > 0 else []
    for sig, wait in [*steps, (signal.SIGKILL, 5.0)]:
        pids = [pid for pid in pids if _alive(pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if _alive(pid)]
            time.sleep(0.05)


# ---------------------------------------------------------------- the engine


class DockerEngine:
    """One private ``dockerd`` (our child) in a temp dir, optionally with the busybox image.

    :meth:`start` (or ``with``) brings it up, waits until the API answers a ping and,
    unless ``image=None``, imports the busybox test image (:attr:`image`).
    :attr:`base_url` is its ``unix://…/docker.sock``; :meth:`client` makes a new
    ``docker.DockerClient`` for it. :meth:`stop` is idempotent and safe on a
    half-started engine, so it always belongs in a ``finally``.
    """

    def __init__(
        self,
        *,
        image: str | None = TEST_IMAGE,
        startup_timeout: float = 20.0,
        stop_timeout: float = 10.0,
        die_with_parent: bool = True,
    ) -> None:
        self.image_tag = image
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.die_with_parent = die_with_parent
        self.root: Path | None = None
        """The temp dir D (kept after :meth:`stop`, which deletes it, for leftover checks)."""
        self.pid: int | None = None
        self.image: str | None = None
        """The busybox image's tag once imported (``corral-test-busybox:latest``)."""
        self.startup_seconds: float | None = None
        """How long :meth:`start` took: daemon up and image imported."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- paths ---------------------------------------------------------------------

    def _require_root(self) -> Path:
        if self.root is None:
            raise RuntimeError("the Docker engine is not started")
        return self.root

    @property
    def socket_path(self) -> Path:
        return self._require_root() / "docker.sock"

    @property
    def base_url(self) -> str:
        """``unix:///tmp/corral-dk-…/docker.sock``: for ``DockerClient`` or ``DOCKER_HOST``."""
        return f"unix://{self.socket_path}"

    @property
    def exec_root(self) -> Path:
        return self._require_root() / "exec"

    @property
    def log_path(self) -> Path:
        return self._require_root() / "dockerd.log"

    @property
    def cgroup_parent(self) -> str:
        """The cgroup (in every v1 hierarchy) under which all our containers' cgroups live."""
        return self._require_root().name

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- clients -------------------------------------------------------------------

    def client(self, **kwargs: Any) -> docker.DockerClient:
        """A new ``docker.DockerClient`` on this engine (API version negotiated)."""
        import docker

        kwargs.setdefault("timeout", 60)
        return docker.DockerClient(base_url=self.base_url, **kwargs)

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> Self:
        """Start dockerd, wait until it answers, import the test image.

        Raises :class:`DockerUnavailable` when the engine is missing here or does not
        come up within ``startup_timeout`` (the message quotes dockerd's log);
        everything started so far is stopped first.
        """
        if self.root is not None:
            raise RuntimeError("this DockerEngine was already started; make a new one")
        check_available()
        began = time.monotonic()
        # Directly under /tmp, short: containerd's sockets under exec/ must stay well
        # inside the 108-byte limit of a Unix socket path, whatever $TMPDIR is.
        self.root = Path(tempfile.mkdtemp(prefix="corral-dk-", dir="/tmp"))
        _LIVE.add(self)
        try:
            (self.root / "daemon.json").write_text("{}\n")
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            self._launch()
            self._wait_ready(began + self.startup_timeout)
            if self.image_tag is not None:
                with contextlib.closing(self.client()) as client:
                    build_busybox_image(client, self.image_tag)
                self.image = self.image_tag
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _launch(self) -> None:
        root = self._require_root()
        assert self._log is not None
        cmd = [
            str(DOCKERD),
            "--config-file", str(root / "daemon.json"),
            "--iptables=false",
            "--bridge=none",
            "--data-root", str(root / "data"),
            "--exec-root", str(self.exec_root),
            "--pidfile", str(root / "dockerd.pid"),
            "-H", self.base_url,
            "--cgroup-parent", f"/{self.cgroup_parent}",
            # Containers still running at daemon shutdown get 1 s, not 15 (stop() has
            # removed them anyway, unless the API was not answering).
            "--shutdown-timeout", "1",
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=root,
                env=env,
                # Own session: a Ctrl-C in the terminal reaches pytest (which stops us in
                # teardown), not dockerd.
                start_new_session=True,
                preexec_fn=_DIE_WITH_PARENT if self.die_with_parent else None,
            )
        except OSError as exc:
            raise DockerUnavailable(f"could not run {DOCKERD}: {exc}") from exc
        self.pid = self._proc.pid

    def _wait_ready(self, deadline: float) -> None:
        """Poll ``ping()`` on our socket until it answers; raise with the log's tail if not."""
        import docker
        import requests

        assert self._proc is not None
        while True:
            code = self._proc.poll()
            if code is not None:
                raise DockerUnavailable(
                    f"dockerd exited with code {code} while starting; the end of its log "
                    f"({self.log_path}):\n{self.log_tail()}"
                )
            if self.socket_path.exists():
                try:
                    with contextlib.closing(
                        docker.DockerClient(base_url=self.base_url, timeout=2)
                    ) as client:
                        if client.ping():
                            return
                except (docker.errors.DockerException, requests.RequestException, OSError):
                    pass
            if time.monotonic() > deadline:
                raise DockerUnavailable(
                    f"dockerd did not answer on {self.socket_path} within "
                    f"{self.startup_timeout:.0f} s; the end of its log:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Remove every container, stop dockerd by PID, kill what outlived it, clean up.

        Idempotent. Only processes that are provably ours are ever signalled: dockerd
        (our child), the containerd named by our exec root's pidfile, processes whose
        command line names our temp dir (containerd shims, runc), and processes in our
        cgroups (containers).
        """
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.poll() is None:
                self._remove_containers()
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    # Its process group is its own (start_new_session=True).
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=self.stop_timeout)
        finally:
            if self.root is not None:
                # Containers first, with SIGKILL: a container's PID 1 ignores SIGTERM,
                # and a clean shutdown would have removed them already.
                _kill_and_wait(self._container_pids(), grace=0.0)
                _kill_and_wait(self._our_pids(), grace=5.0)
                self._unmount_all()
                self._remove_cgroups()
            if self._log is not None:
                self._log.close()
                self._log = None
            if self.root is not None and self.root.exists():
                shutil.rmtree(self.root, ignore_errors=True)
            _LIVE.discard(self)

    def _remove_containers(self) -> None:
        """``docker rm -f`` every container (best effort: the kills below are the backstop)."""
        try:
            with contextlib.closing(self.client(timeout=10)) as client:
                for container in client.containers.list(all=True, ignore_removed=True):
                    with contextlib.suppress(Exception):
                        container.remove(force=True, v=True)
        except Exception as exc:
            if self._log is not None and not self._log.closed:
                self._log.write(f"--- corral: removing containers failed: {exc!r}\n".encode())

    def leftover_processes(self) -> list[str]:
        """``"PID command"`` for every process of this engine still running (should be [])."""
        if self.root is None:
            return []
        return [f"{pid} {_cmdline(pid)}" for pid in self._our_pids() if _alive(pid)]

    def _our_pids(self) -> list[int]:
        """dockerd, its containerd, shims, runc, and container processes: ours, by proof."""
        root = str(self._require_root())
        pids: set[int] = set()
        if self.pid is not None and _alive(self.pid) and root in _cmdline(self.pid):
            pids.add(self.pid)
        # The daemons and shims name our temp dir on their command lines
        # (--data-root/--exec-root, containerd --config, shim -address, runc --root).
        pids.update(pid for pid in _all_pids() if root + "/" in _cmdline(pid))
        # The containerd its pidfile names (checked against its command line, since a
        # PID may be reused); the scan above finds it too, this is belt and braces.
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.exec_root / "containerd" / "containerd.pid").read_text().strip())
            if root in _cmdline(pid):
                pids.add(pid)
        pids.update(self._container_pids())
        pids.discard(os.getpid())
        return sorted(pids)

    def _container_pids(self) -> list[int]:
        """Every process in our cgroups: the containers' (a container whose shim died keeps
        running, reparented to init, with no trace of us on its command line)."""
        pids: set[int] = set()
        for procs in CGROUP_ROOT.glob(f"*/{self.cgroup_parent}/**/cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(line) for line in procs.read_text().split())
        pids.discard(os.getpid())
        return sorted(pids)

    def _unmount_all(self) -> None:
        """Lazily unmount anything still mounted under our temp dir (overlays, netns)."""
        root = str(self._require_root())
        try:
            lines = Path("/proc/self/mountinfo").read_text().splitlines()
        except OSError:
            return
        points = [line.split()[4] for line in lines if len(line.split()) > 4]
        ours = [p for p in points if p == root or p.startswith(root + "/")]
        for point in sorted(set(ours), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)

    def _remove_cgroups(self) -> None:
        """rmdir our (by now empty) cgroup parent and its children, in every hierarchy."""
        for parent in CGROUP_ROOT.glob(f"*/{self.cgroup_parent}"):
            dirs = [parent, *(p for p in parent.rglob("*") if p.is_dir())]
            for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    d.rmdir()

    def log_tail(self, chars: int = 3000) -> str:
        """The end of dockerd's output (it includes its containerd's), for error messages."""
        try:
            text = self.log_path.read_bytes()[-chars:].decode(errors="replace")
        except (OSError, RuntimeError):
            return "(no log)"
        return text.strip() or "(the log is empty)"

    def __enter__(self) -> Self:
        return self if self.running else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid} {self.base_url}" if self.running else "stopped"
        return f"<DockerEngine {state} root={self.root}>"


# ---------------------------------------------------------------- the busybox image

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
user1000:x:1000:1000:test user 1000:/home/user1000:/bin/sh
user1001:x:1001:1001:test user 1001:/home/user1001:/bin/sh
user1002:x:1002:1002:test user 1002:/home/user1002:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """\
root:x:0:
user1000:x:1000:
user1001:x:1001:
user1002:x:1002:
nogroup:x:65534:
"""


def _busybox_applets() -> list[str]:
    """Where each applet goes, e.g. ``bin/sh``, ``usr/bin/head`` (``busybox --list-full``)."""
    result = subprocess.run(
        [str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=False
    )
    if result.returncode == 0 and result.stdout.strip():
        return sorted(set(result.stdout.split()))
    result = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True)
    return sorted({f"bin/{name}" for name in result.stdout.split()})


def busybox_rootfs_tar() -> bytes:
    """A root filesystem as a tar: static busybox, its applet links, /tmp, users and groups.

    Users root (0), user1000..user1002 (1000..1002, with groups of the same ids) and
    nobody (65534), so ``user="1000:1000"`` has a name and a home inside.
    """
    buf = io.BytesIO()
    mtime = int(time.time())

    def info(name: str, kind: bytes, mode: int, uid: int = 0) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.mtime, ti.uid, ti.gid = kind, mode, mtime, uid, uid
        return ti

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "root", "home", "var"):
            tar.addfile(info(d, tarfile.DIRTYPE, 0o700 if d == "root" else 0o755))
        tar.addfile(info("tmp", tarfile.DIRTYPE, 0o1777))
        tar.addfile(info("var/tmp", tarfile.DIRTYPE, 0o1777))
        for uid in (1000, 1001, 1002):
            tar.addfile(info(f"home/user{uid}", tarfile.DIRTYPE, 0o755, uid))
        binary = BUSYBOX.read_bytes()
        ti = info("bin/busybox", tarfile.REGTYPE, 0o755)
        ti.size = len(binary)
        tar.addfile(ti, io.BytesIO(binary))
        for applet in _busybox_applets():
            if applet == "bin/busybox":
                continue
            link = info(applet, tarfile.SYMTYPE, 0o777)
            link.linkname = "/bin/busybox"
            tar.addfile(link)
        for name, text in (("etc/passwd", PASSWD), ("etc/group", GROUP)):
            data = text.encode()
            ti = info(name, tarfile.REGTYPE, 0o644)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def build_busybox_image(client: docker.DockerClient, tag: str = TEST_IMAGE) -> str:
    """Import a busybox image as ``tag`` (unless it exists already); return its id.

    ``docker import`` semantics (a flat root filesystem, no registry, no Dockerfile),
    through the SDK's ``import_image_from_data``, with ``CMD ["/bin/sh"]`` and a PATH.
    Idempotent: an existing ``tag`` is reused as it is.
    """
    import docker
    from docker.utils import parse_repository_tag

    with contextlib.suppress(docker.errors.ImageNotFound):
        return str(client.images.get(tag).id)
    repository, version = parse_repository_tag(tag)
    client.api.import_image_from_data(
        busybox_rootfs_tar(),
        repository=repository,
        tag=version or "latest",
        changes=[
            'CMD ["/bin/sh"]',
            "ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        ],
    )
    return str(client.images.get(tag).id)
