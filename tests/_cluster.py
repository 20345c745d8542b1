"""A multi-node deployment on loopback: a redis-server, N uvicorn nodes of the test server
with SessionMiddleware, and a load balancer in front of them: nginx round-robining every
request over them, or HAProxy sending each session's requests to its owner."""

from __future__ import annotations

import os
import signal

import httpx

from tests._nodes import Node, start_all, stop_all
from tests.support.haproxy import HAProxy
from tests.support.nginx import Nginx
from tests.support.redis_server import RedisServer


class Cluster:
    def __init__(
        self,
        redis: RedisServer,
        prefix: str,
        size: int = 3,
        *,
        app: str = "tests.servers.app:app",
        balancer: str = "nginx",
        **env_extra: str,
    ) -> None:
        """``balancer``: ``nginx`` (round robin, ``examples/nginx.conf``'s settings),
        ``nginx-hash`` (``examples/nginx-hash.conf``: consistent hashing on the session ID)
        or ``haproxy`` (``examples/haproxy.cfg``: a session's requests go to its owner)."""
        assert balancer in ("nginx", "nginx-hash", "haproxy"), balancer
        self.balancer = balancer
        env = {
            "MCP_DB_REDIS_URL": redis.url,
            "MCP_DB_PREFIX": prefix,
            "MCP_DB_MIDDLEWARE": "1",
            **env_extra,
        }
        self.nodes = [Node(app, env=env) for _ in range(size)]
        self.lb = self._balancer()

    def _balancer(self) -> Nginx | HAProxy:
        """The chosen balancer over every node."""
        backends = [f"127.0.0.1:{n.port}" for n in self.nodes]
        if self.balancer == "haproxy":
            return HAProxy(backends)
        return Nginx(backends, hash=self.balancer == "nginx-hash")

    @property
    def url(self) -> str:
        return self.lb.url

    def start(self) -> Cluster:
        try:
            start_all(self.nodes)
            self.lb.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.lb.stop()
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                os.kill(node.process.pid, signal.SIGCONT)  # a frozen node must not hang stop()
        stop_all(self.nodes)

    def session_counts(self) -> list[int]:
        """How many transports each node holds right now."""
        return [
            httpx.get(f"http://127.0.0.1:{n.port}/debug/sessions").json()["sessions"]
            for n in self.nodes
        ]

    def served_by(self) -> set[str]:
        return set(self.lb.upstreams())
