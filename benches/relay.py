"""The relay hop: a request, or an SSE event, that reaches a session's owner through another
node, against the same request sent to the owner directly.

Two nodes of the test suite's SDK server (``tests/servers/app.py``) with SessionMiddleware
under uvicorn, on the benchmark's redis-server. One session, owned by node A; the direct
path talks to A, the relayed path to B, in alternating blocks so both see the same machine.

- per request: ``tools/call echo`` one after another over a kept-alive connection;
- per SSE event: the ``clock`` tool stamps each progress notification with the time it
  was sent; the client subtracts it from the time the event arrived (one clock: loopback);
- throughput: ``clock`` sending events back to back, events per second at the client.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import httpx

from tests._nodes import Node
from tests.test_resume_e2e import RawSession

ECHO = {"name": "echo", "arguments": {"text": "hi"}}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _calls(http: httpx.AsyncClient, url: str, session: RawSession, n: int) -> list[float]:
    times = []
    for i in range(n):
        body = {"jsonrpc": "2.0", "id": 10 + i, "method": "tools/call", "params": ECHO}
        begin = time.perf_counter()
        response = await http.post(url, json=body, headers=session.headers())
        times.append((time.perf_counter() - begin) * 1000)
        if response.status_code != 200 or '"hi"' not in response.text:
            raise RuntimeError(f"{url}: {response.status_code} {response.text[:200]}")
    return times


async def _stream(
    http: httpx.AsyncClient, url: str, session: RawSession, n: int, delay: float
) -> tuple[list[float], float]:
    """Per-event latencies (ms) of one ``clock`` call, and its events per second."""
    call = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {
            "name": "clock",
            "arguments": {"n": n, "delay": delay},
            "_meta": {"progressToken": "t"},
        },
    }
    latencies: list[float] = []
    first = last = 0.0
    async with http.stream("POST", url, json=call, headers=session.headers()) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            now = time.time()
            message = json.loads(line[5:])
            if message.get("method") != "notifications/progress":
                continue
            latencies.append((now - float(message["params"]["message"])) * 1000)
            first = first or time.perf_counter()
            last = time.perf_counter()
    if len(latencies) != n:
        raise RuntimeError(f"{url}: {len(latencies)} of {n} events arrived")
    return latencies, (n - 1) / (last - first) if last > first else float("nan")


async def measure(redis_url: str, quick: bool) -> list[str]:
    n = 200 if quick else 2000
    events = 100 if quick else 500
    burst = 500 if quick else 5000
    env: dict[str, Any] = {
        "MCP_DB_REDIS_URL": redis_url,
        "MCP_DB_PREFIX": "bench-relay",
        "MCP_DB_MIDDLEWARE": "1",
    }
    owner, other = Node(env=env).start(), Node(env=env).start()
    try:
        async with httpx.AsyncClient(timeout=60) as http:
            session = await RawSession(http, owner.url).open()
            await _calls(http, owner.url, session, 50)
            await _calls(http, other.url, session, 50)
            direct: list[float] = []
            relayed: list[float] = []
            for _ in range(10):
                direct += await _calls(http, owner.url, session, n // 10)
                relayed += await _calls(http, other.url, session, n // 10)
            ev_direct: list[float] = []
            ev_relayed: list[float] = []
            for _ in range(5):
                ev_direct += (await _stream(http, owner.url, session, events // 5, 0.002))[0]
                ev_relayed += (await _stream(http, other.url, session, events // 5, 0.002))[0]
            rates_direct, rates_relayed = [], []
            for _ in range(3):
                rates_direct.append((await _stream(http, owner.url, session, burst, 0))[1])
                rates_relayed.append((await _stream(http, other.url, session, burst, 0))[1])
    finally:
        owner.stop()
        other.stop()
    d50, r50 = statistics.median(direct), statistics.median(relayed)
    added = r50 - d50
    e50, f50 = statistics.median(ev_direct), statistics.median(ev_relayed)
    ok = "ok" if added <= 1 else "MISSED"
    ev_ok = "ok" if f50 - e50 <= 1 else "MISSED"
    return [
        f"relay hop: one session owned by node A; direct = to A, relayed = to B, which relays"
        f" to A through Redis ({len(direct):,} requests, {len(ev_direct):,} events each)",
        f"  request   direct  p50 {d50:6.2f} ms  p99 {_pct(direct, 0.99):6.2f} ms",
        f"            relayed p50 {r50:6.2f} ms  p99 {_pct(relayed, 0.99):6.2f} ms"
        f"   added p50 {added:+.2f} ms  p99 {_pct(relayed, 0.99) - _pct(direct, 0.99):+.2f} ms"
        f"  (target p50 <= 1 ms: {ok})",
        f"  SSE event direct  p50 {e50:6.2f} ms  p99 {_pct(ev_direct, 0.99):6.2f} ms"
        "   (sent -> received)",
        f"            relayed p50 {f50:6.2f} ms  p99 {_pct(ev_relayed, 0.99):6.2f} ms"
        f"   added p50 {f50 - e50:+.2f} ms  p99 "
        f"{_pct(ev_relayed, 0.99) - _pct(ev_direct, 0.99):+.2f} ms  (target p50 <= 1 ms: {ev_ok})",
        f"  stream of {burst:,} events back to back: direct {max(rates_direct):,.0f} ev/s,"
        f" relayed {max(rates_relayed):,.0f} ev/s"
        f" ({max(rates_relayed) / max(rates_direct):.2f}x)",
    ]
