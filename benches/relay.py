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
relay frame sealed: ChaCha20-Poly1305, see crates/core/src/relay/seal.rs), in alternating
blocks, and the two relayed hops as a ratio. The hop alone, without HTTP and the SDK, is
measured first: a round trip between two ends of the relay in this process, a request of a
typical size out and a JSON reply back, with and without the secret.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

import httpx

from mcp_db import RedisEventStore
from mcp_db._core import Whole
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
#: What a relayed tools/call carries: its head (scope and headers, a bearer token among
#: them) and body out, a JSON-RPC result back.
HEAD = json.dumps(
    {
        "method": "POST",
        "path": "/mcp",
        "headers": [["authorization", "Bearer " + "t" * 600]] + [["x-header", "v" * 40]] * 8,
    }
)
BODY = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": ECHO}).encode()
REPLY = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hi"}]}}'


async def _round_trips(owner: Any, relayer: Any, owner_name: str, n: int) -> list[float]:
    """``n`` relayed requests one after another, each answered whole; ms each."""
    times = []
    for _ in range(n):
        begin = time.perf_counter()
        forwarding = asyncio.ensure_future(relayer.forward(owner_name, "s", HEAD, BODY, 2000))
        (taken,) = await owner.next_requests(1)
        request_id = taken.id
        owner.respond(request_id, 200, [(b"content-type", b"application/json")], REPLY)
        done = await forwarding
        forward = done.response
        frame = forward and (forward.try_next() or await forward.next())
        times.append((time.perf_counter() - begin) * 1000)
        if not isinstance(frame, Whole):
            raise RuntimeError(f"relay round trip failed: {done.outcome} {frame}")
    return times


async def core_hop(redis_url: str, quick: bool) -> list[str]:
    """The relay's round trip in one process, without and with the secret, alternating."""
    n = 300 if quick else 3000
    times: dict[str, list[float]] = {"plain": [], "sealed": []}
    async with RedisEventStore(redis_url, prefix="bench-hop") as store:
        pairs = {}
        for mode, secret in (("plain", None), ("sealed", SECRET.encode())):
            ends = []
            for role in ("owner", "relayer"):
                name = f"{mode}-{role}"
                await store.deployment.ownership(name, 60_000).beat("{}")
                options = {"secret": secret} if secret else {}
                ends.append(store.deployment.relay(name, **options))
            for end in ends:
                if not await end.ready(2000):
                    raise RuntimeError("the relay did not subscribe")
            pairs[mode] = ends
        for mode, (owner, relayer) in pairs.items():
            await _round_trips(owner, relayer, f"{mode}-owner", 50)
        for _ in range(10):
            for mode, (owner, relayer) in pairs.items():
                times[mode] += await _round_trips(owner, relayer, f"{mode}-owner", n // 10)
        for owner, relayer in pairs.values():
            owner.close()
            relayer.close()
    p50 = {mode: statistics.median(t) for mode, t in times.items()}
    extra_us = 1000 * (p50["sealed"] - p50["plain"])
    return [
        f"relay round trip in one process, no HTTP ({n:,} requests of {len(HEAD) + len(BODY):,}"
        f" bytes, JSON replies of {len(REPLY)} bytes, each way)",
        f"  without a secret p50 {p50['plain']:.3f} ms  p99 {_pct(times['plain'], 0.99):.3f} ms",
        f"  with the secret  p50 {p50['sealed']:.3f} ms  p99 {_pct(times['sealed'], 0.99):.3f} ms"
        f"   ({p50['sealed'] / p50['plain']:.2f}x, {extra_us:+.0f} us)",
    ]


async def measure(redis_url: str, quick: bool) -> list[str]:
    lines = await core_hop(redis_url, quick)
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
