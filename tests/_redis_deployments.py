"""Redis deployments beyond one plain server, started by the suite on loopback: a Redis
Cluster of three primaries, and a server that only speaks TLS and wants a password."""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis as redis_py

from tests.support.redis_server import RedisServer, free_port

SLOTS = 16384
CLUSTER_OPTIONS = ("--cluster-enabled", "yes", "--cluster-node-timeout", "2000")


class RedisCluster:
    """Three primaries, the slots split evenly, every node meeting the others; with
    ``hub_replica``, a fourth node replicates the primary of slot 0 (the relay's pub/sub
    hub), so a test can fail the hub over."""

    def __init__(self, size: int = 3, *, hub_replica: bool = False) -> None:
        self.size = size
        self.bus_ports = [free_port() for _ in range(size + int(hub_replica))]
        self.nodes = [
            # The default bus port, port + 10000, may be taken or above 65535.
            RedisServer(args=[*CLUSTER_OPTIONS, "--cluster-port", str(bus)])
            for bus in self.bus_ports
        ]

    @property
    def url(self) -> str:
        """Any node's URL will do: mcp-db discovers the rest."""
        return self.nodes[1].url

    def start(self) -> RedisCluster:
        try:
            for node in self.nodes:
                node.start()
            self._form()
        except BaseException:
            self.cleanup()
            raise
        return self

    def _form(self, seconds: float = 20) -> None:
        clients = [redis_py.Redis(port=n.port) for n in self.nodes]
        share = SLOTS // self.size
        for i, client in enumerate(clients):
            if i < self.size:
                last = SLOTS - 1 if i == self.size - 1 else (i + 1) * share - 1
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * share, last)
            if i:
                client.execute_command(
                    "CLUSTER", "MEET", "127.0.0.1", self.nodes[0].port, self.bus_ports[0]
                )
        _wait(lambda: all(_formed(c, len(clients)) for c in clients), seconds, "form")
        if len(clients) > self.size:
            replica = clients[self.size]
            replica.execute_command("CLUSTER", "REPLICATE", _node_id(clients[0]))
            _wait(lambda: _role(replica) == ("slave", "connected"), seconds, "start replicating")
        for client in clients:
            client.close()

    def hub(self) -> int:
        """The port of the primary serving slot 0 (the relay's pub/sub hub)."""
        with redis_py.Redis(port=self._live()[0].port) as client:
            return _slot_zero(client)[1]

    def fail_over_the_hub(self) -> None:
        """Promotes the hub's replica with ``CLUSTER FAILOVER``: the old hub goes on running,
        as the new hub's replica, and every connection to it stays open."""
        old = self.hub()
        replica = next(n for n in self._live() if n.port != old and self._replicates(n))
        with redis_py.Redis(port=replica.port) as client:
            client.execute_command("CLUSTER", "FAILOVER")
        self._await_hub_other_than(old)
        with redis_py.Redis(port=old) as client:
            _wait(lambda: _role(client) == ("slave", "connected"), 20, "reattach the old hub")

    def kill_the_hub(self) -> None:
        """``kill -9`` of the hub. Once the others find it failed (``cluster-node-timeout``,
        2 s here) they promote its replica, and the cluster answers again."""
        old = self.hub()
        next(n for n in self.nodes if n.port == old).stop()
        self._await_hub_other_than(old)

    def _live(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.process is not None]

    def _replicates(self, node: RedisServer) -> bool:
        with redis_py.Redis(port=node.port) as client:
            return _role(client)[0] == "slave"

    def _await_hub_other_than(self, old: int, seconds: float = 30) -> None:
        clients = [redis_py.Redis(port=n.port) for n in self._live()]
        try:
            _wait(
                lambda: all(_slot_zero(c)[1] != old and _state_ok(c) for c in clients),
                seconds,
                "move slot 0 to another primary",
            )
        finally:
            for client in clients:
                client.close()

    def client(self) -> redis_py.RedisCluster:
        return redis_py.RedisCluster.from_url(self.url, decode_responses=True)

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


def _wait(done: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Redis Cluster did not {what} in time")
        time.sleep(0.1)


def _node_id(client: redis_py.Redis) -> str:
    return str(client.execute_command("CLUSTER", "MYID").decode())


def _role(client: redis_py.Redis) -> tuple[str, str]:
    role = client.execute_command("ROLE")
    kind = role[0].decode()
    return (kind, role[3].decode()) if kind == "slave" else (kind, "")


def _slot_zero(client: redis_py.Redis) -> tuple[str, int]:
    for start, _end, primary, *_replicas in client.execute_command("CLUSTER", "SLOTS"):
        if int(start) == 0:
            return primary[0].decode(), int(primary[1])
    raise RuntimeError("no node serves slot 0")


def _cluster_info(client: redis_py.Redis) -> dict[str, str]:
    info = client.execute_command("CLUSTER", "INFO")
    text = info.decode() if isinstance(info, bytes) else str(info)
    return dict(line.split(":", 1) for line in text.split() if ":" in line)


def _state_ok(client: redis_py.Redis) -> bool:
    return _cluster_info(client).get("cluster_state") == "ok"


def _formed(client: redis_py.Redis, size: int) -> bool:
    fields = _cluster_info(client)
    return fields.get("cluster_state") == "ok" and fields.get("cluster_known_nodes") == str(size)


class TlsRedis:
    """A redis-server whose clients must use TLS, checked against a CA made for the test,
    and log in as ``mcp`` (the default user is off). Its plain port only answers the
    harness's liveness probe with -NOAUTH."""

    USER, PASSWORD = "mcp", "s3cret-pw"

    def __init__(self) -> None:
        self.certs = Path(tempfile.mkdtemp(prefix="mcp-db-tls-"))
        self.tls_port = free_port()
        self.ca = self.certs / "ca.pem"
        _make_certs(self.certs)
        tls = {
            "--tls-port": str(self.tls_port),
            "--tls-cert-file": str(self.certs / "server.pem"),
            "--tls-key-file": str(self.certs / "server.key"),
            "--tls-ca-cert-file": str(self.ca),
            "--tls-auth-clients": "no",
        }
        users = ["--user", "default", "off"]
        users += ["--user", self.USER, "on", f">{self.PASSWORD}", "~*", "&*", "+@all"]
        self.server = RedisServer(args=[*(a for kv in tls.items() for a in kv), *users])

    def url(self, password: str | None = None, *, ca: bool = True) -> str:
        query = f"?ssl_ca_certs={self.ca}" if ca else ""
        secret = self.PASSWORD if password is None else password
        return f"rediss://{self.USER}:{secret}@127.0.0.1:{self.tls_port}/0{query}"

    def start(self) -> TlsRedis:
        self.server.start()
        return self

    def cleanup(self) -> None:
        self.server.cleanup()


def _make_certs(into: Path) -> None:
    """A CA, and a server certificate it signed for 127.0.0.1, with the openssl command."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=into, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=mcp-db test CA", "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    (into / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem")  # fmt: skip
