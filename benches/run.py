"""The measurements, their schedule and the printed table.

Every measurement runs once per store as a warm-up, then ``--runs`` times per store,
alternating which store goes first, against the same ``redis-server`` in this process.
The figure printed is the best run of each store; ``-v`` prints every run.

* ``store_event`` throughput: ``streams`` asyncio tasks, each with its own stream in its
  own session, each awaiting ``store_event`` in a loop; events/s over all tasks.
* replay: ``replay_events_after(first_event_id, callback)`` over one stream holding
  ``1 + events`` events, the callback an ``async def`` that appends to a list.

Keys are deleted after every run, so Redis holds at most one run's events at a time.

The other groups, each with its own baseline, are in ``middleware.py``, ``relay.py``,
``subscriptions.py``, ``cluster.py`` and ``fastmcp.py`` (run by ``make bench`` in the
FastMCP virtualenv); ``--only`` runs one group (``make bench BENCH_ARGS="--only
subscriptions"``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any, Protocol

import redis.asyncio as aioredis
from mcp.server.streamable_http import EventMessage
from mcp_types import JSONRPCNotification

from benches import cluster, middleware, relay, subscriptions
from benches.baseline import RedisPyEventStore
from mcp_db import RedisEventStore
from tests.support.redis_server import RedisServer

OURS = "mcp-db"
BASE = "redis-py"


class View(Protocol):
    async def store_event(self, stream_id: str, message: Any) -> str | None: ...

    async def replay_events_after(
        self, last_event_id: str, send_callback: Callable[[EventMessage], Awaitable[None]]
    ) -> str | None: ...


class Store(Protocol):
    def for_session(self, session_id: str) -> View: ...

    async def close(self) -> None: ...


@dataclass
class Counts:
    one_stream: int
    streams: int
    per_stream: int
    replay: int

    @classmethod
    def for_mode(cls, quick: bool) -> Counts:
        if quick:
            return cls(one_stream=2_000, streams=64, per_stream=100, replay=2_000)
        return cls(one_stream=20_000, streams=64, per_stream=1_000, replay=10_000)


@dataclass
class Line:
    """One row of the table: every run of both stores."""

    label: str
    unit: str  # "ev/s" (higher is better) or "ms" (lower is better)
    target: float | None = None
    runs: dict[str, list[float]] = field(default_factory=lambda: {OURS: [], BASE: []})

    @property
    def higher_is_better(self) -> bool:
        return self.unit != "ms"

    def best(self, side: str) -> float:
        return max(self.runs[side]) if self.higher_is_better else min(self.runs[side])

    @property
    def ratio(self) -> float:
        ours, base = self.best(OURS), self.best(BASE)
        return ours / base if self.higher_is_better else base / ours


def notification(i: int) -> JSONRPCNotification:
    """A realistic progress notification, ~150 bytes of JSON, built as SDK 2.x builds it."""
    return JSONRPCNotification(
        jsonrpc="2.0",
        method="notifications/progress",
        params={
            "progressToken": "tok-7f3a9c",
            "progress": i,
            "total": 100_000,
            "message": f"indexing batch {i}",
        },
    )


def sdk_json(message: Any) -> str:
    return message.model_dump_json(by_alias=True, exclude_unset=True)


def new_session() -> str:
    return uuid.uuid4().hex


# -- one run of each measurement -----------------------------------------------------------


async def run_store(store: Store, streams: int, messages: list[Any]) -> float:
    """``streams`` concurrent writers, each ``len(messages)`` events; returns events/s."""
    views = [store.for_session(new_session()) for _ in range(streams)]

    async def writer(view: View) -> int:
        failed = 0
        for message in messages:
            if await view.store_event("1", message) is None:
                failed += 1
        return failed

    gc.collect()
    start = time.perf_counter()
    failed = await asyncio.gather(*(writer(view) for view in views))
    elapsed = time.perf_counter() - start
    if sum(failed):
        raise RuntimeError(f"{type(store).__name__}: {sum(failed)} store_event calls returned None")
    return streams * len(messages) / elapsed


async def fill_stream(store: Store, messages: list[Any]) -> tuple[View, str]:
    """One stream holding ``messages``; returns its view and the first event's ID."""
    view = store.for_session(new_session())
    first_id = await view.store_event("1", messages[0])
    if first_id is None:
        raise RuntimeError(f"{type(store).__name__}: store_event returned None")
    for message in messages[1:]:
        if await view.store_event("1", message) is None:
            raise RuntimeError(f"{type(store).__name__}: store_event returned None")
    return view, first_id


async def run_replay(
    view: View, first_id: str, expected: list[str] | None = None
) -> tuple[float, list[EventMessage]]:
    """Replays everything after ``first_id``; returns milliseconds and what was replayed."""
    received: list[EventMessage] = []

    async def callback(event: EventMessage) -> None:
        received.append(event)

    gc.collect()
    start = time.perf_counter()
    stream = await view.replay_events_after(first_id, callback)
    elapsed = time.perf_counter() - start
    if stream != "1":
        raise RuntimeError(f"replay returned stream {stream!r}, expected '1'")
    if expected is not None:
        got = [sdk_json(event.message) for event in received]
        if got != expected:
            raise RuntimeError(
                f"replay returned {len(got)} events, expected {len(expected)}"
                + ("" if len(got) != len(expected) else " (same count, different messages)")
            )
        if len({event.event_id for event in received}) != len(received):
            raise RuntimeError("replay returned duplicate event IDs")
    return elapsed * 1000, received


# -- the schedule ------------------------------------------------------------------------------


class Bench:
    def __init__(self, url: str, counts: Counts, runs: int, verbose: bool) -> None:
        self.url = url
        self.counts = counts
        self.runs = runs
        self.verbose = verbose
        self.admin = aioredis.Redis.from_url(url, decode_responses=False)
        self.stores: dict[str, Any] = {}

    async def open(self) -> None:
        ours = RedisEventStore(self.url, prefix="bench-mcpdb")
        await ours.connect()
        base = RedisPyEventStore(self.url, prefix="bench-redispy")
        await base.connect()
        self.stores = {OURS: ours, BASE: base}

    async def close(self) -> None:
        for store in self.stores.values():
            await store.close()
        await self.admin.aclose()

    async def clear(self) -> None:
        """Deletes every key either store wrote (this redis-server is ours alone)."""
        await self.admin.flushall()

    def order(self, run: int) -> list[str]:
        return [OURS, BASE] if run % 2 == 0 else [BASE, OURS]

    def note(self, line: Line, side: str, value: float) -> None:
        if self.verbose:
            print(f"    {line.label:<36} {side:<9} {fmt(value, line.unit)}", flush=True)

    async def store_line(self, label: str, streams: int, per_stream: int) -> Line:
        line = Line(label, "ev/s", target=5.0 if streams > 1 else None)
        messages = [notification(i) for i in range(per_stream)]
        warm = messages[: max(1, per_stream // 5)]
        for side in (OURS, BASE):  # warm-up: connections, code paths, Redis allocations
            await run_store(self.stores[side], streams, warm)
            await self.clear()
        for run in range(self.runs):
            for side in self.order(run):
                value = await run_store(self.stores[side], streams, messages)
                await self.clear()
                line.runs[side].append(value)
                self.note(line, side, value)
        return line

    async def replay_line(self, label: str, events: int) -> Line:
        line = Line(label, "ms", target=8.0)
        messages = [notification(i) for i in range(events + 1)]
        expected = [sdk_json(m) for m in messages[1:]]
        filled = {side: await fill_stream(self.stores[side], messages) for side in (OURS, BASE)}
        for side in (OURS, BASE):  # warm-up, and a check that both replay the same messages
            await run_replay(*filled[side], expected=expected)
        for run in range(self.runs):
            for side in self.order(run):
                value, _ = await run_replay(*filled[side])
                line.runs[side].append(value)
                self.note(line, side, value)
        await self.clear()
        return line

    async def all(self) -> list[Line]:
        c = self.counts
        lines = [
            await self.store_line(f"store_event, 1 stream ({c.one_stream:,} ev)", 1, c.one_stream),
            await self.store_line(
                f"store_event, {c.streams} streams ({c.streams}x{c.per_stream:,} ev)",
                c.streams,
                c.per_stream,
            ),
            await self.replay_line(f"replay {c.replay:,} events, 1 stream", c.replay),
        ]
        return lines


# -- output ----------------------------------------------------------------------------------


def fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:,.1f} ms" if value < 100 else f"{value:,.0f} ms"
    return f"{value:,.0f} ev/s"


def table(lines: list[Line]) -> str:
    width = max(len(line.label) for line in lines) + 2
    header = f"{'measurement':<{width}}{OURS:>14}  {BASE:>14}  {'ratio':>7}  target"
    out = [header, "-" * len(header)]
    for line in lines:
        ratio = line.ratio
        target = ""
        if line.target is not None:
            verdict = "ok" if ratio >= line.target else "MISSED"
            target = f">={line.target:g}x {verdict}"
        out.append(
            f"{line.label:<{width}}{fmt(line.best(OURS), line.unit):>14}  "
            f"{fmt(line.best(BASE), line.unit):>14}  {ratio:>6.1f}x  {target}".rstrip()
        )
    return "\n".join(out)


def spread(lines: list[Line]) -> str:
    out = ["every run (median / best / worst):"]
    for line in lines:
        for side in (OURS, BASE):
            values = line.runs[side]
            ordered = sorted(values, reverse=line.higher_is_better)
            out.append(
                f"  {line.label:<36} {side:<9} {fmt(statistics.median(values), line.unit):>13}"
                f" / {fmt(ordered[0], line.unit):>13} / {fmt(ordered[-1], line.unit):>13}"
            )
    return "\n".join(out)


def cpus() -> str:
    total = os.cpu_count() or 0
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = total
    return f"{total} CPUs" if usable == total else f"{total} CPUs ({usable} usable)"


async def _store(redis_url: str, args: argparse.Namespace) -> None:
    runner = Bench(redis_url, Counts.for_mode(args.quick), args.runs, args.verbose)
    await runner.open()
    try:
        lines = await runner.all()
        stats = runner.stores[OURS].stats()
    finally:
        await runner.close()
    if args.verbose:
        print()
    print(table(lines))
    if args.verbose:
        print()
        print(spread(lines))
    trouble = {k: v for k, v in stats.items() if k in ("redis_errors", "dropped") and v}
    if trouble:
        print(f"\nwarning: mcp-db reported {trouble} (all stats: {stats})")
    print()


async def bench(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    server = RedisServer().start()
    try:
        admin = aioredis.Redis.from_url(server.url)
        info = await admin.info("server")
        await admin.aclose()
        redis_version = info.get("redis_version", "?")
        if isinstance(redis_version, bytes):
            redis_version = redis_version.decode()
        print(
            f"Python {platform.python_version()}  mcp {version('mcp')}  "
            f"mcp-db {version('mcp-db')}  redis-py {version('redis')}  "
            f"redis-server {redis_version}  {cpus()}"
        )
        print(
            f"mcp-db: RedisEventStore; redis-py: benches/baseline.py; best of {args.runs} runs "
            f"per store after a warm-up, alternating, one redis-server on {server.url}"
            + ("  [--quick]" if args.quick else "")
        )
        sample = sdk_json(notification(12_345))
        print(f"each event: a notifications/progress message, {len(sample)} bytes of JSON")
        print(flush=True)
        if args.only in (None, "store"):
            await _store(server.url, args)
        if args.only in (None, "middleware"):
            print("\n".join(await middleware.measure(server.url, args.quick)))
            print()
        if args.only in (None, "relay"):
            print("\n".join(await relay.measure(server.url, args.quick)))
            print()
        if args.only in (None, "subscriptions"):
            print("\n".join(await subscriptions.measure(server.url, args.quick, args.runs)))
        if args.only in (None, "cluster"):
            assert server.process is not None
            lines = await cluster.measure(server.url, server.process.pid, args.quick, args.runs)
            print("\n".join(lines))
            print()
        if args.only == "fastmcp":  # in the FastMCP virtualenv: make bench runs it there
            from benches import fastmcp

            print("\n".join(await fastmcp.measure(server.url, args.quick)))
        print(f"\ntotal {time.perf_counter() - started:.0f} s")
    finally:
        server.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benches",
        description="mcp-db's RedisEventStore against a plain redis-py store, same Redis.",
    )
    parser.add_argument("--quick", action="store_true", help="small counts, a few seconds")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per store (default 3)")
    parser.add_argument(
        "--only",
        choices=("store", "middleware", "relay", "subscriptions", "cluster", "fastmcp"),
        help="run one group of benchmarks",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print every run")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    asyncio.run(bench(args))
    return 0
