"""A throwaway HAProxy in front of test nodes, for the tests of the owner-affine recipe.

Like ``nginx.py``, it starts a real HAProxy process in a temporary directory; it is not a
deployment tool. Its configuration is ``examples/haproxy.cfg`` itself, so the tests run
the documented recipe, with what only a test needs changed:

- the frontend listens on a free loopback port, and the backend holds the given nodes;
- every answer names the node that served it, in an ``X-Served-By`` header;
- an admin socket in the directory, to read the stick table (``show table``);
- with ``sticky=False``, the ``stick`` lines are left out: plain round robin, to compare.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.support.redis_server import free_port, wait_listening, wait_until

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "haproxy.cfg"
#: One request of the example's log-format: client, method, URI, status, backend/server.
_LOGGED = re.compile(r"^\S+ [A-Z]+ \S+ -?\d+ (?P<backend>[^/\s]+)/(?P<server>\S+) ")


def render(backends: list[str], port: int, admin: Path, *, sticky: bool = True) -> str:
    """``examples/haproxy.cfg`` for ``backends`` (``host:port``), listening on ``port``."""
    text = EXAMPLE.read_text()
    text = _once(r"^    bind :8080$", f"    bind 127.0.0.1:{port}", text)
    servers = "\n".join(f"    server node{i} {b}" for i, b in enumerate(backends))
    text = _once(r"^    server node-a node-a:8000\n    server node-b node-b:8000$", servers, text)
    text = _once(r"^global$", f"global\n    stats socket {admin} mode 600 level admin", text)
    served_by = "    http-response set-header X-Served-By %s"
    text = _once(r"^    balance roundrobin$", f"    balance roundrobin\n{served_by}", text)
    if not sticky:
        text, count = re.subn(r"(?m)^    stick .*\n", "", text)
        assert count == 2, "the example has a stick store-response and a stick match line"
    return text


def _once(pattern: str, replacement: str, text: str) -> str:
    """``text`` with the one match of ``pattern`` (a whole line or lines) replaced."""
    new, count = re.subn(pattern, replacement.replace("\\", "\\\\"), text, flags=re.M)
    if count != 1:
        raise ValueError(f"examples/haproxy.cfg has {count} matches of {pattern!r}, not 1")
    return new


class HAProxy:
    """Balances over ``backends`` (``host:port`` strings) as ``examples/haproxy.cfg`` does:
    requests without a session round robin, the others go to the node that answered for
    the session last. Its servers are named ``node0``, ``node1``, ... in that order."""

    def __init__(self, backends: list[str], *, sticky: bool = True) -> None:
        binary = shutil.which("haproxy") or (
            "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
        )
        if binary is None:
            raise RuntimeError("haproxy is not installed (Debian: apt-get install haproxy)")
        self.binary = binary
        self.backends = list(backends)
        self.port = free_port()
        self.prefix = Path(tempfile.mkdtemp(prefix="mcp-db-haproxy-"))
        self.admin = self.prefix / "admin.sock"
        self.config = self.prefix / "haproxy.cfg"
        self.config.write_text(render(self.backends, self.port, self.admin, sticky=sticky))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> HAProxy:
        log = self.prefix / "haproxy.log"
        with log.open("wb") as out:
            # -db: in the foreground, this very process serves (no daemon, no master).
            self.process = subprocess.Popen(
                [self.binary, "-db", "-f", str(self.config)], stdout=out, stderr=subprocess.STDOUT
            )
        # The admin socket lives in this process's own directory: once it is there and the
        # port accepts, the process listening is this one, not another that took the port.
        if not (
            wait_until(self.admin.exists, self.process, 10)
            and wait_listening(self.port, self.process, 10)
            and self.process.poll() is None
        ):
            output = log.read_text(errors="replace")
            self.stop()
            raise RuntimeError(f"haproxy did not start:\n{output}")
        return self

    def server(self, name: str) -> str:
        """The ``host:port`` of the server named ``name`` (an ``X-Served-By`` value)."""
        return self.backends[int(name.removeprefix("node"))]

    def upstreams(self) -> list[str]:
        """The backend (``host:port``) that served each request logged so far. HAProxy logs
        a request when it ends, so a stream still open is not there yet."""
        log = self.prefix / "haproxy.log"
        found = (_LOGGED.match(line) for line in log.read_text(errors="replace").splitlines())
        return [self.server(m["server"]) for m in found if m and m["server"].startswith("node")]

    def command(self, line: str) -> str:
        """The answer of the admin socket to ``line`` (e.g. ``show table nodes``)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.admin))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stuck(self) -> dict[str, str]:
        """The stick table: session ID -> the ``host:port`` its requests go to."""
        table = {}
        for line in self.command("show table nodes").splitlines():
            # 0x55d0c1a2b3c4: key=<session id> use=0 exp=1799000 server_id=1 server_key=node0
            fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
            if "key" in fields and "server_key" in fields:
                table[fields["key"]] = self.server(fields["server_key"])
        return table

    def output(self) -> str:
        log = self.prefix / "haproxy.log"
        return log.read_text(errors="replace")[-4000:] if log.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None
        shutil.rmtree(self.prefix, ignore_errors=True)
