"""A throwaway ``redis-server`` on a free loopback port, for the tests, benchmarks and
``make demo``: a real server process, not a way to run Redis in production."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_handed_out: set[int] = set()
# Below Linux's ephemeral range (32768-60999), so an outgoing connection cannot take a port
# between the moment it is chosen here and the moment a server binds it.
_PORTS = range(20000, 32000)
# Test runs side by side (``make test``'s lanes) each take a range of their own, so one never
# picks a port another has handed out, or holds across a server's restart: "FIRST-LAST".
if os.environ.get("MCP_DB_TEST_PORTS"):
    _first, _, _last = os.environ["MCP_DB_TEST_PORTS"].partition("-")
    _PORTS = range(int(_first), int(_last) + 1)


def free_port() -> int:
    """A loopback port nothing listens on, never the same twice in one process: two servers
    given ports before either binds must not get one port (nginx would then fail to bind,
    and a check for "something listens" would find the other server there)."""
    for _ in range(10 * len(_PORTS)):
        port = random.choice(_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(
        f"no free loopback port left in {_PORTS.start}-{_PORTS.stop - 1}"
        f" ({len(_handed_out)} handed out by this process)"
    )


def wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], seconds: float) -> bool:
    """Polls ``ready()`` until it holds; ``False`` if ``process`` exits or ``seconds`` pass
    first."""
    deadline = time.monotonic() + seconds
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def wait_listening(port: int, process: subprocess.Popen[bytes], seconds: float) -> bool:
    """Waits until something accepts connections on ``port``; ``False`` if ``process``
    exits or ``seconds`` pass first."""
    return wait_until(lambda: _accepts(port), process, seconds)


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            # Any reply means it is up: a server requiring AUTH answers -NOAUTH.
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def stop_process(process: subprocess.Popen[bytes], *, kill: bool = False) -> None:
    """Ends ``process`` with SIGTERM (SIGKILL with ``kill``), and SIGKILL if it is still
    there 10 s later."""
    if process.poll() is not None:
        return
    if kill:
        process.kill()
    else:
        process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class RedisServer:
    """One ``redis-server`` process; ``stop()`` and ``start()`` keep the same port."""

    def __init__(
        self, port: int | None = None, *, persistent: bool = False, args: Sequence[str] = ()
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed (Debian: apt-get install redis-server)"
            )
        self.binary = binary
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="mcp-db-redis-"))
        self.persistent = persistent
        self.args = list(args)  # more redis-server options: TLS, ACL users, cluster mode
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                # Persistent servers fsync every write so a kill -9 loses nothing.
                "--appendonly",
                "yes" if self.persistent else "no",
                "--appendfsync",
                "always",
                "--dir",
                str(self.dir),
                "--logfile",
                str(self.dir / "redis.log"),
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_until(lambda: _ping(self.port), self.process, 10):
            log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log}")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
