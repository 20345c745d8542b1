"""What N nodes cost: server CPU per request and requests per second, for one deployment
against another, on this machine.

Deployments of the test suite's SDK server (``tests/servers/app.py``), each under load in
turn, interleaved over several runs:

- ``bare SDK``: one node, the SDK alone (no event store, no mcp-db);
- ``store alone, 1 node``: the SDK with ``RedisEventStore`` as its event store, no
  middleware (what the store costs, apart from what the middleware adds);
- ``mcp-db, 1 node``: ``RedisEventStore`` and ``SessionMiddleware``;
- ``3 nodes, round robin``: three such nodes behind nginx round robin;
- ``3 nodes, RR, normal I/O``: round robin again, with the core's I/O thread under the
  system's default scheduling policy (``MCP_DB_IO_SCHED=normal``) rather than as a batch
  thread (``src/runtime.rs``): what the batch policy saves;
- ``1 node, batch process`` and ``3 nodes, RR, batch procs``: mcp-db on one node, and
  round robin, with every node a batch process (``chrt --batch 0``, every thread of it):
  the recipe for several nodes on one host (``docs/deploy/workers.md``), measured against
  the same deployments under the default policy;
- ``3 nodes, nginx hash``: behind nginx ``hash $http_mcp_session_id consistent``;
- ``3 nodes, HAProxy stick``: behind HAProxy learning each session's node from the
  ``Mcp-Session-Id`` response header (``examples/haproxy.cfg``).

Server CPU is read from ``/proc`` (user + system time of every node process and of
redis-server, before and after a run); the load balancer's is not counted, the client's is
reported apart. Where Redis's part goes is printed too: the commands each request costs,
from ``INFO commandstats`` (commands a script runs are counted on their own as well as in
the script's time), and the servers' context switches per request, voluntary +
involuntary (every wake-up of a thread that waited, and every time one was preempted:
three nodes, Redis, the balancer and the client share this machine's two cores). Behind
round robin and nginx hash, sessions are handed to the node their requests arrive at
(``SessionMiddleware``'s ``hand_off``); the last line times that.

The load: ``SESSIONS`` sessions at once, each on a kept-alive connection of its own:
``initialize``, then ``tools/call`` one after another, then DELETE. The client is a bare
HTTP/1.1 loop (``_Connection``), so that it is not the bottleneck.

The machine's speed drifts by as much as 20% over minutes, so a ratio is taken within each
run, between deployments measured a few seconds apart, and the median of those is printed
with their range; the absolute figures are medians over the runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from tests._nodes import BATCH, Node
from tests.support.haproxy import HAProxy
from tests.support.nginx import Nginx

SESSIONS = 32
#: Single runs vary by 20% here, as much as the targets' margins: at least this many.
MIN_RUNS = 7
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def _switches(pid: int) -> tuple[int, int]:
    """Context switches of every thread of process ``pid`` so far: (voluntary, involuntary)."""
    voluntary = involuntary = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/status") as status:
            for line in status:
                if line.startswith("voluntary_ctxt_switches"):
                    voluntary += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    involuntary += int(line.split()[1])
    return voluntary, involuntary


@dataclass
class Deployment:
    name: str
    nodes: list[Node]
    balancer: Nginx | HAProxy | None = None
    #: Per run: server CPU per request, requests per second, the client's CPU per request,
    #: redis-server's part of the server CPU per request, and the servers' context switches
    #: per request, voluntary (a thread waited) and involuntary (a thread was preempted).
    runs: list[tuple[float, ...]] = field(default_factory=list)
    #: Redis's commands in the last run: calls and microseconds per request, by command.
    commands: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.balancer.port if self.balancer is not None else self.nodes[0].port

    def start(self) -> Deployment:
        for node in self.nodes:
            node.start()
        if self.balancer is not None:
            self.balancer.start()
        return self

    def stop(self) -> None:
        if self.balancer is not None:
            self.balancer.stop()
        for node in self.nodes:
            node.stop()

    def pids(self) -> list[int]:
        return [n.process.pid for n in self.nodes if n.process is not None]


def _deployments(redis_url: str) -> list[Deployment]:
    env = {"MCP_DB_REDIS_URL": redis_url, "MCP_DB_PREFIX": "bench-cluster"}
    wrapped = {**env, "MCP_DB_MIDDLEWARE": "1"}

    def three(
        kind: type[Nginx] | type[HAProxy],
        io: str = "batch",
        wrapper: tuple[str, ...] = (),
        **balancer: Any,
    ) -> tuple[list[Node], Any]:
        nodes = [Node(env={**wrapped, "MCP_DB_IO_SCHED": io}, wrapper=wrapper) for _ in range(3)]
        return nodes, kind([f"127.0.0.1:{n.port}" for n in nodes], **balancer)

    return [
        Deployment("bare SDK, 1 node", [Node(env={**env, "MCP_DB_STORE": "none"})]),
        Deployment("store alone, 1 node", [Node(env=env)]),
        Deployment("mcp-db, 1 node", [Node(env=wrapped)]),
        Deployment("3 nodes, round robin", *three(Nginx)),
        Deployment("3 nodes, RR, normal I/O", *three(Nginx, io="normal")),
        Deployment("1 node, batch process", [Node(env=wrapped, wrapper=BATCH)]),
        Deployment("3 nodes, RR, batch procs", *three(Nginx, wrapper=BATCH)),
        Deployment("3 nodes, nginx hash", *three(Nginx, hash=True)),
        Deployment("3 nodes, HAProxy stick", *three(HAProxy)),
    ]


class _Connection:
    """A kept-alive HTTP/1.1 connection that sends prepared requests and reads whole
    responses (``Content-Length`` or chunked), with nothing else: the load generator must
    cost far less than the servers it loads."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int
    ) -> None:
        self.reader, self.writer, self.port = reader, writer, port

    @classmethod
    async def open(cls, port: int) -> _Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port), port)

    async def request(self, method: str, headers: dict[str, str], body: bytes = b"") -> tuple:
        head = [f"{method} /mcp HTTP/1.1", f"host: 127.0.0.1:{self.port}"]
        head.append(f"content-length: {len(body)}")
        head += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        status = int((await self.reader.readline()).split()[1])
        found: dict[str, str] = {}
        while (line := await self.reader.readline()) != b"\r\n":
            name, _, value = line.decode().partition(":")
            found[name.lower()] = value.strip()
        if found.get("transfer-encoding") == "chunked":
            chunks = []
            while size := int((await self.reader.readline()).strip(), 16):
                chunks.append(await self.reader.readexactly(size + 2))
            await self.reader.readline()
            data = b"".join(chunks)
        else:
            data = await self.reader.readexactly(int(found.get("content-length", "0")))
        return status, found, data

    def close(self) -> None:
        self.writer.close()


_JSON = {"content-type": "application/json", "accept": "application/json, text/event-stream",
         "mcp-protocol-version": "2025-06-18"}  # fmt: skip
_INIT = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "bench", "version": "0"}}}).encode()  # fmt: skip
_INITIALIZED = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode()


async def _open_session(connection: _Connection) -> dict[str, str]:
    """``initialize`` and ``notifications/initialized``; the headers of the session's
    later requests."""
    status, headers, data = await connection.request("POST", _JSON, _INIT)
    if status != 200:
        raise RuntimeError(f"port {connection.port}: initialize got {status} {data[:200]!r}")
    session = {**_JSON, "mcp-session-id": headers["mcp-session-id"]}
    await connection.request("POST", session, _INITIALIZED)
    return session


async def _echo(connection: _Connection, session: dict[str, str], i: int, k: int) -> None:
    """Call ``i`` of session ``k``: ``echo``, whose answer must carry its text."""
    call = {"jsonrpc": "2.0", "id": i + 10, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": f"k{k}"}}}  # fmt: skip
    status, _, data = await connection.request("POST", session, json.dumps(call).encode())
    if status != 200 or f'"k{k}"'.encode() not in data:
        raise RuntimeError(f"port {connection.port}: {status} {data[:200]!r}")


async def _session(port: int, k: int, calls: int) -> int:
    """One session: ``initialize``, ``calls`` calls in a row, DELETE; the requests made."""
    connection = await _Connection.open(port)
    try:
        session = await _open_session(connection)
        for i in range(calls):
            await _echo(connection, session, i, k)
        await connection.request("DELETE", session)
    finally:
        connection.close()
    return calls + 3


async def _hand_off_times(nodes: list[Node], sessions: int = 40) -> tuple[float, float, float]:
    """Median latency (ms) of a session's requests sent to node B while node A owns it: the
    first (relayed to A), the second (A hands the session to B instead, and B rebuilds it
    from its record and serves it), the third (B serves it as the owner)."""
    times: list[list[float]] = [[], [], []]
    for k in range(sessions):
        owner = await _Connection.open(nodes[0].port)
        other = await _Connection.open(nodes[1].port)
        try:
            session = await _open_session(owner)
            for i in range(3):
                started = time.perf_counter()
                await _echo(other, session, i, k)
                times[i].append((time.perf_counter() - started) * 1000)
            await other.request("DELETE", session)
        finally:
            owner.close()
            other.close()
    relayed, handed, owned = (statistics.median(t) for t in times)
    return relayed, handed, owned


async def _load(port: int, calls: int) -> int:
    """``SESSIONS`` sessions at once; the requests made."""
    return sum(await asyncio.gather(*(_session(port, k, calls) for k in range(SESSIONS))))


def _named(deployments: list[Deployment], name: str) -> Deployment:
    return next(d for d in deployments if name in d.name)


async def _run(deployment: Deployment, redis: Any, redis_pid: int, calls: int) -> None:
    await redis.config_resetstat()
    pids = [*deployment.pids(), redis_pid]
    before = [_cpu_seconds(pid) for pid in pids]
    switches_before = [_switches(pid) for pid in pids]
    client_before, started = time.process_time(), time.perf_counter()
    requests = await _load(deployment.port, calls)
    wall = time.perf_counter() - started
    client = time.process_time() - client_before
    used = [_cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
    switches = [_switches(pid) for pid in pids]
    per_request = [seconds / requests * 1e6 for seconds in (sum(used), client, used[-1])]
    voluntary, involuntary = (
        sum(now[i] - then[i] for now, then in zip(switches, switches_before, strict=True))
        / requests
        for i in (0, 1)
    )
    deployment.runs.append(
        (per_request[0], requests / wall, per_request[1], per_request[2], voluntary, involuntary)
    )
    deployment.commands = {
        name.removeprefix("cmdstat_"): (stat["calls"] / requests, stat["usec"] / requests)
        for name, stat in (await redis.info("commandstats")).items()
        if not name.startswith("cmdstat_config")
    }


async def measure(redis_url: str, redis_pid: int, quick: bool, runs: int) -> list[str]:
    calls = 10 if quick else 40
    runs = max(MIN_RUNS, runs) if not quick else 1
    deployments = _deployments(redis_url)
    redis = aioredis.from_url(redis_url)
    try:
        for deployment in deployments:
            deployment.start()
        for deployment in deployments:  # warm-up: imports, connections, first sessions
            await _load(deployment.port, 2)
        for run in range(runs):
            order = deployments if run % 2 == 0 else deployments[::-1]
            for deployment in order:
                await _run(deployment, redis, redis_pid, calls)
        relayed, handed, owned = await _hand_off_times(_named(deployments, "round robin").nodes)
    finally:
        for deployment in deployments:
            deployment.stop()
        await redis.aclose()

    def median(deployment: Deployment, i: int) -> float:
        return statistics.median(r[i] for r in deployment.runs)

    def ratios(deployment: Deployment, base: Deployment, i: int = 0) -> list[float]:
        """CPU per request (``i=1``: requests per second) against ``base``'s, run by run."""
        return [r[i] / b[i] for r, b in zip(deployment.runs, base.runs, strict=True)]

    bare, one = _named(deployments, "bare SDK"), _named(deployments, "mcp-db, 1 node")
    lines = [
        f"cluster: server CPU per request (nodes + redis-server, from /proc), {SESSIONS} "
        f"sessions x {calls} tools/call, {runs} interleaved run(s): medians; ratios taken "
        "within each run, their median and range",
        f"  {'deployment':<24}{'CPU/request':>13}{'of it Redis':>13}{'req/s':>9}{'vs bare':>9}"
        f"{'vs 1 node':>11}{'range':>13}{'client CPU/req':>16}{'switches/req':>14}",
    ]
    for d in deployments:
        to_one = ratios(d, one)
        lines.append(
            f"  {d.name:<24}{median(d, 0):>10.0f} us{median(d, 3):>10.0f} us{median(d, 1):>9.0f}"
            f"{statistics.median(ratios(d, bare)):>8.2f}x{statistics.median(to_one):>10.2f}x"
            f"{min(to_one):>7.2f}-{max(to_one):.2f}{median(d, 2):>13.0f} us"
            f"{median(d, 4):>8.1f} +{median(d, 5):>4.1f}"
        )
    for d in deployments[1:]:
        top = sorted(d.commands.items(), key=lambda item: -item[1][1])[:5]
        lines.append(
            f"  Redis per request, {d.name}: "
            + ", ".join(f"{name} {calls:.2f}x {usec:.1f} us" for name, (calls, usec) in top)
        )
    batch, normal = _named(deployments, "round robin"), _named(deployments, "normal I/O")
    cpu, rate = ratios(batch, normal), ratios(batch, normal, 1)
    lines.append(
        "  round robin, the I/O thread a batch thread against the default policy, run by run: "
        f"CPU per request {statistics.median(cpu):.2f}x ({min(cpu):.2f}-{max(cpu):.2f}), "
        f"requests per second {statistics.median(rate):.2f}x ({min(rate):.2f}-{max(rate):.2f})"
    )
    solo, spread = _named(deployments, "1 node, batch"), _named(deployments, "RR, batch")
    both = ratios(spread, solo)
    lines.append(
        "  every node a batch process (chrt --batch 0, docs/deploy/workers.md), run by run: "
        f"1 node {statistics.median(ratios(solo, one)):.2f}x mcp-db on 1 node, round robin "
        f"{statistics.median(ratios(spread, batch)):.2f}x round robin; round robin against 1 "
        f"node, both batch: {statistics.median(both):.2f}x ({min(both):.2f}-{max(both):.2f})"
    )
    lines.append(
        f"  hand-off: a session's requests to node B while node A owns it, median of 40: "
        f"1st (relayed) {relayed:.2f} ms, 2nd (handed to B, rebuilt there) {handed:.2f} ms, "
        f"3rd (B owns it) {owned:.2f} ms"
    )
    return lines
