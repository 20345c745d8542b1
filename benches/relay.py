"""The relay hop: a request, or an SSE event, that reaches a session's owner through another
node, against the same request sent to the owner directly.

Two nodes of the test suite's SDK server (``tests/servers/app.py``) with SessionMiddleware
under uvicorn, on the benchmark's redis-server. One session, owned by node A; the direct
path talks to A, the relayed path to B, in alternating blocks so both see the same machine.

- per request: ``tools/call echo`` one after another over a kept-alive connection;
- per SSE event: the ``clock`` tool stamps each progress notification with the time it
  was sent; the client subtracts it from the time the event arrived (one clock: loopback);
- throughput: ``clock`` sending events back to back, events per second at the client.

All of it twice, on a pair of nodes without a relay secret and on a pair with one (every
relay frame sealed: ChaCha20-Poly1305, see src/seal.rs), in alternating blocks, and the
two relayed hops as a ratio.
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


#: The relay secret of the sealed pair of nodes (every frame encrypted and authenticated).
SECRET = "bench relay secret, 32 bytes long"


async def measure(redis_url: str, quick: bool) -> list[str]:
    n = 200 if quick else 2000
    events = 100 if quick else 500
    burst = 500 if quick else 5000
    env: dict[str, Any] = {
        "MCP_DB_REDIS_URL": redis_url,
        "MCP_DB_PREFIX": "bench-relay",
        "MCP_DB_MIDDLEWARE": "1",
    }
    sealed_env = {**env, "MCP_DB_PREFIX": "bench-relay-sealed", "MCP_DB_RELAY_SECRET": SECRET}
    # Two pairs of nodes, one without and one with the relay secret, measured in
    # alternating blocks: "plain" and "sealed" below.
    nodes = {
        "plain": (Node(env=env).start(), Node(env=env).start()),
        "sealed": (Node(env=sealed_env).start(), Node(env=sealed_env).start()),
    }
    direct: dict[str, list[float]] = {"plain": [], "sealed": []}
    relayed: dict[str, list[float]] = {"plain": [], "sealed": []}
    ev_direct: dict[str, list[float]] = {"plain": [], "sealed": []}
    ev_relayed: dict[str, list[float]] = {"plain": [], "sealed": []}
    rates_direct: dict[str, list[float]] = {"plain": [], "sealed": []}
    rates_relayed: dict[str, list[float]] = {"plain": [], "sealed": []}
    try:
        async with httpx.AsyncClient(timeout=60) as http:
            sessions = {}
            for mode, (owner, other) in nodes.items():
                sessions[mode] = session = await RawSession(http, owner.url).open()
                await _calls(http, owner.url, session, 50)
                await _calls(http, other.url, session, 50)
            for _ in range(10):
                for mode, (owner, other) in nodes.items():
                    direct[mode] += await _calls(http, owner.url, sessions[mode], n // 10)
                    relayed[mode] += await _calls(http, other.url, sessions[mode], n // 10)
            for _ in range(5):
                for mode, (owner, other) in nodes.items():
                    session = sessions[mode]
                    ev_direct[mode] += (
                        await _stream(http, owner.url, session, events // 5, 0.002)
                    )[0]
                    ev_relayed[mode] += (
                        await _stream(http, other.url, session, events // 5, 0.002)
                    )[0]
            for _ in range(3):
                for mode, (owner, other) in nodes.items():
                    session = sessions[mode]
                    rates_direct[mode].append(
                        (await _stream(http, owner.url, session, burst, 0))[1]
                    )
                    rates_relayed[mode].append(
                        (await _stream(http, other.url, session, burst, 0))[1]
                    )
    finally:
        for pair in nodes.values():
            for node in pair:
                node.stop()
    lines = []
    added: dict[str, float] = {}
    for mode in ("plain", "sealed"):
        d50, r50 = statistics.median(direct[mode]), statistics.median(relayed[mode])
        added[mode] = r50 - d50
        e50, f50 = statistics.median(ev_direct[mode]), statistics.median(ev_relayed[mode])
        ok = "ok" if added[mode] <= 1 else "MISSED"
        ev_ok = "ok" if f50 - e50 <= 1 else "MISSED"
        d99, r99 = _pct(direct[mode], 0.99), _pct(relayed[mode], 0.99)
        e99, f99 = _pct(ev_direct[mode], 0.99), _pct(ev_relayed[mode], 0.99)
        rate_d, rate_r = max(rates_direct[mode]), max(rates_relayed[mode])
        title = (
            "without a relay secret" if mode == "plain" else "with a relay secret (sealed frames)"
        )
        lines += [
            f"relay hop {title}: one session owned by node A; direct = to A, relayed = to B,"
            f" which relays to A through Redis ({len(direct[mode]):,} requests,"
            f" {len(ev_direct[mode]):,} events each)",
            f"  request   direct  p50 {d50:6.2f} ms  p99 {d99:6.2f} ms",
            f"            relayed p50 {r50:6.2f} ms  p99 {r99:6.2f} ms"
            f"   added p50 {added[mode]:+.2f} ms  p99 {r99 - d99:+.2f} ms"
            f"  (target p50 <= 1 ms: {ok})",
            f"  SSE event direct  p50 {e50:6.2f} ms  p99 {e99:6.2f} ms   (sent -> received)",
            f"            relayed p50 {f50:6.2f} ms  p99 {f99:6.2f} ms"
            f"   added p50 {f50 - e50:+.2f} ms  p99 {f99 - e99:+.2f} ms"
            f"  (target p50 <= 1 ms: {ev_ok})",
            f"  stream of {burst:,} events back to back: direct {rate_d:,.0f} ev/s,"
            f" relayed {rate_r:,.0f} ev/s ({rate_r / rate_d:.2f}x)",
        ]
    plain_r50, sealed_r50 = (
        statistics.median(relayed["plain"]),
        statistics.median(relayed["sealed"]),
    )
    lines.append(
        f"relay secret: relayed request p50 {sealed_r50:.2f} ms sealed vs {plain_r50:.2f} ms plain"
        f" ({sealed_r50 / plain_r50:.2f}x); hop added {added['sealed']:+.2f} vs"
        f" {added['plain']:+.2f} ms ({added['sealed'] / added['plain']:.2f}x);"
        f" relayed stream {max(rates_relayed['sealed']) / max(rates_relayed['plain']):.2f}x"
        " the plain rate"
    )
    return lines
