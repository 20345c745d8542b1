"""Redis deployments beyond one plain server, started by the suite on loopback: a Redis
Cluster of three primaries, and a server that only speaks TLS and wants a password."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import redis as redis_py

from mcp_db._redis_server import RedisServer, free_port

SLOTS = 16384
CLUSTER_OPTIONS = ("--cluster-enabled", "yes", "--cluster-node-timeout", "2000")


class RedisCluster:
    """Three primaries, no replicas, the slots split evenly, every node meeting the others."""

    def __init__(self, size: int = 3) -> None:
        self.bus_ports = [free_port() for _ in range(size)]
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
        share = SLOTS // len(clients)
        for i, client in enumerate(clients):
            last = SLOTS - 1 if i == len(clients) - 1 else (i + 1) * share - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * share, last)
            if i:
                client.execute_command(
                    "CLUSTER", "MEET", "127.0.0.1", self.nodes[0].port, self.bus_ports[0]
                )
        deadline = time.monotonic() + seconds
        while not all(_formed(c, len(clients)) for c in clients):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not form in time")
            time.sleep(0.1)
        for client in clients:
            client.close()

    def client(self) -> redis_py.RedisCluster:
        return redis_py.RedisCluster.from_url(self.url, decode_responses=True)

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


def _formed(client: redis_py.Redis, size: int) -> bool:
    info = client.execute_command("CLUSTER", "INFO")
    text = info.decode() if isinstance(info, bytes) else str(info)
    fields = dict(line.split(":", 1) for line in text.split() if ":" in line)
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
