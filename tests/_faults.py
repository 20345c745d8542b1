"""A fault-injection layer: the faults operators and attackers produce, on real processes.

``Faults`` wraps a persistent ``redis-server`` (append-only, fsync always: a kill -9 loses
nothing) and some test-server nodes, and offers what can go wrong with them: kill,
restart, pause and fill Redis; kill, stop and terminate a node. ``Paths`` puts nginx in
front of the nodes in two ways, so that one test runs over both paths a request can take:

- ``direct``: every request goes to the session's owner (node 0);
- ``relayed``: ``initialize`` goes to node 0, which then owns the session, and every
  other request to the other nodes, which relay it to the owner through Redis.

Extend it by adding a method here and a test that uses it (tests/test_faults.py).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import redis as redis_py

from tests._cluster import Cluster
from tests._nodes import Node
from tests.support.nginx import Nginx
from tests.support.redis_server import RedisServer

PATHS = ("direct", "relayed")


class Faults:
    def __init__(self, redis: RedisServer, nodes: list[Node]) -> None:
        self.redis = redis
        self.nodes = nodes

    # -- Redis ---------------------------------------------------------------------------

    def kill_redis(self) -> None:
        """kill -9: connections drop at once; what was written is on disk."""
        self.redis.stop()

    def restart_redis(self) -> None:
        self.redis.start()

    @contextmanager
    def redis_down(self, seconds: float) -> Iterator[threading.Thread]:
        """Kills Redis now and restarts it ``seconds`` later, in the background; on exit,
        waits until it is back."""
        self.kill_redis()
        timer = threading.Timer(seconds, self.restart_redis)
        timer.start()
        try:
            yield timer
        finally:
            timer.join()

    def pause_redis(self, milliseconds: int, mode: str = "ALL") -> None:
        """``CLIENT PAUSE``: Redis stays up, but holds every command (or every write)."""
        self.client().execute_command("CLIENT", "PAUSE", milliseconds, mode)

    def fill_redis(self) -> None:
        """Fills Redis until it refuses writes with OOM, as a big key written by something
        else would, then sets ``maxmemory`` a little under what it uses, so that it stays
        full however its own buffers breathe. The policy must be ``noeviction``."""
        r = self.client()
        assert r.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        r.config_set("maxmemory", int(r.info("memory")["used_memory"]) + 512 * 1024)
        chunk = b"x" * 64 * 1024
        for _ in range(100):
            try:
                r.append("someone-else:big", chunk)
            except redis_py.exceptions.OutOfMemoryError:
                break
        else:
            raise AssertionError("Redis never filled up")
        r.config_set("maxmemory", int(r.info("memory")["used_memory"]) - 256 * 1024)
        try:
            r.set("probe", "x", px=1000)
        except redis_py.exceptions.OutOfMemoryError:
            return
        raise AssertionError("Redis took a write after it was filled")

    def client(self) -> redis_py.Redis:
        return redis_py.Redis.from_url(self.redis.url)

    # -- nodes ---------------------------------------------------------------------------

    def kill_node(self, i: int) -> None:
        self.nodes[i].stop(kill=True)

    def terminate_node(self, i: int) -> None:
        self.nodes[i].stop()

    def freeze_node(self, i: int) -> None:
        """SIGSTOP: the process holds its sockets and state but answers nothing."""
        self._signal(i, signal.SIGSTOP)

    def thaw_node(self, i: int) -> None:
        self._signal(i, signal.SIGCONT)

    def _signal(self, i: int, sig: signal.Signals) -> None:
        process = self.nodes[i].process
        assert process is not None, f"node {i} is not running"
        os.kill(process.pid, sig)


class Paths(Cluster):
    """``size`` nodes with SessionMiddleware on one Redis, and nginx in front of them,
    routing as ``path`` says (see the module docstring)."""

    def __init__(
        self, redis: RedisServer, path: str, *, prefix: str, size: int = 2, **env: str
    ) -> None:
        assert path in PATHS, path
        assert size >= 2, "the relayed path needs a node besides the owner"
        self.path = path
        # Every request of the relayed path stays relayed: no hand-off to the relaying node.
        env.setdefault("MCP_DB_HAND_OFF", "0")
        super().__init__(redis, prefix, size=size, **env)
        self.faults = Faults(redis, self.nodes)

    def _balancer(self) -> Nginx:
        owner = f"127.0.0.1:{self.nodes[0].port}"
        others = [f"127.0.0.1:{n.port}" for n in self.nodes[1:]]
        return Nginx([owner] if self.path == "direct" else others, opening=owner)

    def upstream_ports(self) -> list[str]:
        """The node port that served each request so far, in order."""
        return [upstream.rsplit(":", 1)[-1] for upstream in self.lb.upstreams()]

    def logs(self) -> str:
        return "\n".join(f"--- node {n.port}\n{n.output()}" for n in self.nodes)
