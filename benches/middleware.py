"""SessionMiddleware costs: per-request latency against the bare SDK on one node, and the
first request on a node that must take a session over and rebuild it, against the warm
path. The takeover is the one a crashed owner causes once its lease has lapsed: the record
names an owner with no heartbeat, so the node claims the session (fenced by its epoch) and
rebuilds the SDK transport from the stored ``initialize`` params.

Nodes are the test suite's SDK server (``tests/servers/app.py``) under uvicorn in
subprocesses, on the same redis-server as the rest of the benchmark; the client sends
``tools/call`` requests one after another over a kept-alive connection.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import httpx
import redis.asyncio as aioredis

from tests._nodes import Node
from tests.test_resume_e2e import RawSession

ECHO = {"name": "echo", "arguments": {"text": "hi"}}


async def _timed_calls(
    http: httpx.AsyncClient, session: RawSession, n: int, start_id: int = 100
) -> list[float]:
    times = []
    for i in range(n):
        body = {"jsonrpc": "2.0", "id": start_id + i, "method": "tools/call", "params": ECHO}
        begin = time.perf_counter()
        response = await http.post(session.url, json=body, headers=session.headers())
        times.append((time.perf_counter() - begin) * 1000)
        if response.status_code != 200 or '"hi"' not in response.text:
            raise RuntimeError(f"{session.url}: {response.status_code} {response.text[:200]}")
    return times


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(redis_url: str, quick: bool) -> list[str]:
    n = 300 if quick else 2000
    sessions = 30 if quick else 150
    env: dict[str, Any] = {"MCP_DB_REDIS_URL": redis_url, "MCP_DB_PREFIX": "bench-mw"}
    bare = Node(env=env).start()
    nodes = [Node(env={**env, "MCP_DB_MIDDLEWARE": "1"}).start() for _ in range(2)]
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            # Latency, alternating bare and middleware in blocks so both see the same machine.
            bare_times: list[float] = []
            mw_times: list[float] = []
            plain = await RawSession(http, bare.url).open()
            wrapped = await RawSession(http, nodes[0].url).open()
            await _timed_calls(http, plain, 50)
            await _timed_calls(http, wrapped, 50)
            for block in range(10):
                bare_times += await _timed_calls(http, plain, n // 10, 1000 + block * n)
                mw_times += await _timed_calls(http, wrapped, n // 10, 1000 + block * n)
            # Takeover: a session opened on node 0, whose owner then "dies" (the record names
            # a node without a heartbeat); its first request on node 1, then warm ones.
            cold: list[float] = []
            warm: list[float] = []
            admin = aioredis.Redis.from_url(redis_url)
            for _ in range(sessions):
                session = await RawSession(http, nodes[0].url).open()
                await admin.hset(f"bench-mw:s:{{{session.id}}}", "owner", "crashed-node")
                session.url = nodes[1].url
                cold += await _timed_calls(http, session, 1)
                warm += await _timed_calls(http, session, 3, 200)
                await http.delete(nodes[1].url, headers=session.headers())
            await admin.aclose()
    finally:
        bare.stop()
        for node in nodes:
            node.stop()
    bare50, mw50 = statistics.median(bare_times), statistics.median(mw_times)
    overhead = (mw50 / bare50 - 1) * 100
    extra = statistics.median(cold) - statistics.median(warm)
    overhead_ok = "ok" if overhead <= 10 else "MISSED"
    extra_ok = "ok" if extra <= 2 else "MISSED"
    cold50, warm50 = statistics.median(cold), statistics.median(warm)
    return [
        f"SessionMiddleware, tools/call one after another ({len(mw_times):,} each, one node)",
        f"  bare SDK      p50 {bare50:6.2f} ms   p99 {_pct(bare_times, 0.99):6.2f} ms",
        f"  middleware    p50 {mw50:6.2f} ms   p99 {_pct(mw_times, 0.99):6.2f} ms"
        f"   p50 overhead {overhead:+.1f}%  (target <= 10%: {overhead_ok})",
        f"first request on a node that takes over a crashed owner's session ({sessions} sessions)",
        f"  taken over    p50 {cold50:6.2f} ms   warm p50 {warm50:6.2f} ms"
        f"   extra {extra:+.2f} ms  (target <= 2 ms: {extra_ok})",
    ]
