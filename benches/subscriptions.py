"""The subscription bus across processes, against the SDK's in-process bus on one node.

``RedisSubscriptionBus`` stands for the bus of two nodes: one in this process, one in a
child process (``python -m benches.subscriptions listen|publish``) on the benchmark's
redis-server. The baseline, ``InMemorySubscriptionBus`` (``mcp.server.subscriptions``),
runs in this process, in alternating blocks, with the same listeners.

- **Latency, publish to delivery.** This process publishes ``ResourceUpdated`` events
  one at a time, a millisecond apart so none waits behind another, each URI carrying
  ``time.monotonic_ns()`` taken just before ``publish``. The child's listener subtracts
  it from ``time.monotonic_ns()`` when it is called. ``CLOCK_MONOTONIC`` is one clock for
  the whole machine on Linux, so the two processes' readings compare directly: this is
  the one-way time a node's event takes to reach a listener on another node (Redis, the
  core's reader, the hand-off to the event loop), without halving a round trip that
  would count two publishes and a turnaround. The baseline is the same loop with the
  listener in this process, on the in-process bus.
- **Deliveries per second to 1,000 listeners on one node.** The child publishes
  ``ToolsListChanged`` events back to back (64 publishes in flight); this process's bus
  has 1,000 counting listeners, and one more after them stamps the time each event has
  reached them all. Deliveries per second = listeners x (events - 1) / (last stamp -
  first stamp). The baseline publishes the same number of events, awaited one after
  another as a handler would, to the same listeners on the in-process bus. On one
  machine the publishing process takes CPU from the listening one while it runs, which a
  real second node would not. So the rate over the events that reached the listeners after
  the publisher had sent its last one (it says when, on the same machine-wide clock) is
  printed as well.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated, ToolsListChanged

from mcp_db import RedisSubscriptionBus

LISTENERS = 1_000
ROOT = Path(__file__).resolve().parent.parent


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Count:
    """A listener that counts what it hears."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, event: Any) -> None:
        self.n += 1


class Stamps:
    """A listener that notes when each event reached it (``time.monotonic_ns()``)."""

    def __init__(self) -> None:
        self.times: list[int] = []

    def __call__(self, event: Any) -> None:
        self.times.append(time.monotonic_ns())


# -- the child process ----------------------------------------------------------------------


async def _listen(url: str, prefix: str) -> None:
    """Prints, as JSON, the one-way latency in ns of every ``t:`` event, once ``end`` came."""
    bus = RedisSubscriptionBus(url, prefix=prefix)
    latencies: list[int] = []
    done = asyncio.Event()

    def listener(event: Any) -> None:
        now = time.monotonic_ns()
        uri = getattr(event, "uri", "")
        if uri.startswith("t:"):
            latencies.append(now - int(uri[2:]))
        elif uri == "end":
            done.set()

    bus.subscribe(listener)
    await done.wait()
    print(json.dumps({"latencies": latencies, "stats": bus.stats()}), flush=True)


async def _publish(url: str, prefix: str) -> None:
    """For each line ``n`` on stdin, publishes ``n`` events back to back, then says so."""
    bus = RedisSubscriptionBus(url, prefix=prefix)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        left = int(line)
        while left:
            burst = min(left, 64)
            await asyncio.gather(*(bus.publish(ToolsListChanged()) for _ in range(burst)))
            left -= burst
        print(json.dumps({**bus.stats(), "done_ns": time.monotonic_ns()}), flush=True)


def child(argv: list[str]) -> int:
    role, url, prefix = argv
    asyncio.run((_listen if role == "listen" else _publish)(url, prefix))
    return 0


async def _spawn(role: str, url: str, prefix: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benches.subscriptions",
        role,
        url,
        prefix,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.kill()
        await process.wait()


async def _subscribed(url: str, prefix: str, n: int = 1, seconds: float = 10) -> None:
    """Waits until ``n`` buses listen on ``prefix``'s channel."""
    admin = aioredis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + seconds
        while (await admin.pubsub_numsub(f"{prefix}:sub"))[0][1] < n:
            if time.monotonic() > deadline:
                raise RuntimeError("the subscription bus did not subscribe in time")
            await asyncio.sleep(0.01)
    finally:
        await admin.aclose()


# -- latency ----------------------------------------------------------------------------------


async def _one_at_a_time(publish: Callable[[Any], Any], n: int, tag: str) -> None:
    for _ in range(n):
        await publish(ResourceUpdated(uri=f"{tag}:{time.monotonic_ns()}"))
        await asyncio.sleep(0.001)


async def latency(url: str, quick: bool) -> list[str]:
    n, blocks = (300, 3) if quick else (2_000, 5)
    prefix = "bench-sub-latency"
    local: list[float] = []

    def here(event: Any) -> None:
        local.append(time.monotonic_ns() - int(event.uri[2:]))

    memory = InMemorySubscriptionBus()
    memory.subscribe(here)
    child = await _spawn("listen", url, prefix)
    try:
        await _subscribed(url, prefix)
        bus = RedisSubscriptionBus(url, prefix=prefix)
        await _one_at_a_time(memory.publish, 50, "w")
        await _one_at_a_time(bus.publish, 50, "w")
        local.clear()
        for _ in range(blocks):
            await _one_at_a_time(memory.publish, n // blocks, "t")
            await _one_at_a_time(bus.publish, n // blocks, "t")
        await bus.publish(ResourceUpdated(uri="end"))
        assert child.stdout is not None
        report = json.loads(await asyncio.wait_for(child.stdout.readline(), 30))
    finally:
        await _stop(child)
    remote = [ns / 1e6 for ns in report["latencies"]]
    local_ms = [ns / 1e6 for ns in local]
    if len(remote) != len(local_ms):
        raise RuntimeError(f"{len(remote)} of {len(local_ms)} events reached the other process")
    m50, r50 = statistics.median(local_ms), statistics.median(remote)
    ok = "ok" if r50 <= 1 else "MISSED"
    return [
        f"subscription bus, publish -> listener, one event at a time ({len(remote):,} events each)",
        f"  in-process bus, one node    p50 {m50:7.3f} ms  p99 {_pct(local_ms, 0.99):7.3f} ms"
        "   (SDK InMemorySubscriptionBus)",
        f"  Redis bus, another process  p50 {r50:7.3f} ms  p99 {_pct(remote, 0.99):7.3f} ms"
        f"   {r50 / m50:,.0f}x  (target p50 <= 1 ms: {ok})",
    ]


# -- deliveries per second --------------------------------------------------------------------


def _listeners(bus: Any) -> tuple[list[Count], Stamps]:
    counts = [Count() for _ in range(LISTENERS)]
    for count in counts:
        bus.subscribe(count)
    stamps = Stamps()
    bus.subscribe(stamps)
    return counts, stamps


def _rate(times: list[int]) -> float:
    """Deliveries per second to the listeners, from when each event reached them all."""
    return LISTENERS * (len(times) - 1) * 1e9 / (times[-1] - times[0])


def _heard(counts: list[Count], stamps: Stamps, events: int) -> list[int]:
    heard = sum(c.n for c in counts)
    if heard != events * LISTENERS or len(stamps.times) != events:
        raise RuntimeError(f"{heard:,} of {events * LISTENERS:,} deliveries")
    return stamps.times


async def _in_process(events: int) -> float:
    memory = InMemorySubscriptionBus()
    counts, stamps = _listeners(memory)
    for _ in range(events):
        await memory.publish(ToolsListChanged())
    return _rate(_heard(counts, stamps, events))


async def _across(
    bus: RedisSubscriptionBus,
    listeners: tuple[list[Count], Stamps],
    publisher: asyncio.subprocess.Process,
    events: int,
) -> tuple[float, float | None]:
    """Deliveries per second while the other process publishes and after; and after it
    finished alone (``None`` if too few events were left by then)."""
    counts, stamps = listeners
    for count in counts:
        count.n = 0
    stamps.times.clear()
    assert publisher.stdin is not None and publisher.stdout is not None
    publisher.stdin.write(f"{events}\n".encode())
    await publisher.stdin.drain()
    sent = json.loads(await asyncio.wait_for(publisher.stdout.readline(), 60))
    deadline = time.monotonic() + 30
    while len(stamps.times) < events and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    stats = bus.stats()
    if stats["dropped_backlog"] or sent["publish_failed"]:
        raise RuntimeError(f"events lost: publisher {sent}, listeners' bus {stats}")
    times = _heard(counts, stamps, events)
    after = [t for t in times if t > sent["done_ns"]]
    return _rate(times), _rate(after) if len(after) >= events // 10 else None


async def throughput(url: str, quick: bool, runs: int) -> list[str]:
    events = 2_000 if quick else 10_000
    prefix = "bench-sub-rate"
    memory: list[float] = []
    redis: list[float] = []
    alone: list[float] = []
    bus = RedisSubscriptionBus(url, prefix=prefix)
    listeners = _listeners(bus)
    publisher = await _spawn("publish", url, prefix)
    try:
        await _subscribed(url, prefix)
        await _in_process(events // 10)  # warm-up
        await _across(bus, listeners, publisher, events // 10)
        for _ in range(runs):
            memory.append(await _in_process(events))
            overall, after = await _across(bus, listeners, publisher, events)
            redis.append(overall)
            alone += [] if after is None else [after]
    finally:
        await _stop(publisher)
    best_memory, best_redis = max(memory), max(redis)
    best_alone = f"{max(alone):13,.0f} /s   {max(alone) / best_memory:.2f}x" if alone else "n/a"
    return [
        f"subscription bus, deliveries per second to {LISTENERS:,} listeners on one node"
        f" ({events:,} events, best of {runs})",
        f"  in-process bus, published on the node     {best_memory:13,.0f} /s",
        f"  Redis bus, published by another process   {best_redis:13,.0f} /s"
        f"   {best_redis / best_memory:.2f}x",
        f"    once that process had sent them all     {best_alone}"
        "   (until then it competes for the CPU)",
    ]


async def measure(redis_url: str, quick: bool, runs: int = 3) -> list[str]:
    return [*await latency(redis_url, quick), *await throughput(redis_url, quick, runs)]


if __name__ == "__main__":
    sys.exit(child(sys.argv[1:]))
