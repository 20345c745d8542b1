"""A throwaway nginx round-robin load balancer, for the tests, benchmarks and ``make demo``.

Like ``redis_server``, it starts a real nginx process, with the SSE-safe settings of
``examples/nginx.conf`` in a temporary prefix; it is not a deployment tool.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.redis_server import free_port, wait_listening, wait_until

CONFIG = """\
worker_processes 1;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    log_format upstream '$request_method $status $upstream_addr';
    access_log {prefix}/access.log upstream;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream mcp {{
{balance}{servers}
        keepalive 64;
    }}
{opening}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{target};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            # SSE: pass every event on at once, and let streams stay open.
            proxy_buffering off;
            proxy_cache off;
            proxy_read_timeout 1h;
            # A node that refuses the connection (dead) is skipped for the next one.
            proxy_next_upstream error timeout non_idempotent;
            proxy_connect_timeout 2s;
            client_max_body_size 4m;
        }}
    }}
}}
"""


# Requests without a session (initialize) go to one backend, every other to the pool: the
# session's owner is then known and every request in it is relayed, which makes a relayed
# path deterministic for fault tests.
OPENING = """\
    upstream opening {{
        server {backend} max_fails=0;
        keepalive 16;
    }}
    map $http_mcp_session_id $pool {{
        "" opening;
        default mcp;
    }}
"""


#: Consistent hashing on the session ID: every request of a session goes to one backend
#: (``initialize``, which has none, to any).
HASH = "        hash $http_mcp_session_id consistent;\n"


class Nginx:
    """Round-robins every request over ``backends`` (``host:port`` strings).

    With ``opening``, requests that carry no ``Mcp-Session-Id`` go to that backend instead.
    With ``hash``, requests of one session all go to one backend (``HASH``).
    """

    def __init__(
        self, backends: list[str], *, opening: str | None = None, hash: bool = False
    ) -> None:
        binary = shutil.which("nginx") or (
            "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
        )
        if binary is None:
            raise RuntimeError("nginx is not installed (Debian: apt-get install nginx-light)")
        self.binary = binary
        self.port = free_port()
        self.prefix = Path(tempfile.mkdtemp(prefix="mcp-db-nginx-"))
        self.opening, self.hash = opening, hash
        self._configure(backends)
        self.process: subprocess.Popen[bytes] | None = None

    def _configure(self, backends: list[str]) -> None:
        servers = "\n".join(f"        server {b} max_fails=0;" for b in backends)
        (self.prefix / "nginx.conf").write_text(
            CONFIG.format(
                prefix=self.prefix,
                servers=servers,
                balance=HASH if self.hash else "",
                port=self.port,
                opening=OPENING.format(backend=self.opening) if self.opening else "",
                target="$pool" if self.opening else "mcp",
            )
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> Nginx:
        conf = str(self.prefix / "nginx.conf")
        with (self.prefix / "stderr.log").open("wb") as stderr:
            self.process = subprocess.Popen(
                [self.binary, "-p", str(self.prefix), "-c", conf, "-g", "daemon off;"],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        # nginx writes its pid file once it holds its sockets: that, not just "something
        # listens on the port", says this process is the one listening.
        pid = self.prefix / "nginx.pid"
        if not (
            wait_listening(self.port, self.process, 10)
            and wait_until(pid.exists, self.process, 10)
            and self.process.poll() is None
        ):
            log = (self.prefix / "stderr.log").read_text(errors="replace")
            self.stop()
            raise RuntimeError(f"nginx did not start:\n{log}")
        return self

    def upstreams(self) -> list[str]:
        """The backend that served each request so far, in order."""
        log = self.prefix / "access.log"
        return [line.split()[-1] for line in log.read_text().splitlines()] if log.exists() else []

    def restart(self, backends: list[str]) -> Nginx:
        """Balances over ``backends`` from now on, on the same port, its access log going
        on: a stop and a start, not ``nginx -s reload``, whose old workers would go on
        serving the connections they hold for a while. Open connections are cut."""
        self._halt()
        self._configure(backends)
        return self.start()

    def _halt(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        self._halt()
        shutil.rmtree(self.prefix, ignore_errors=True)
