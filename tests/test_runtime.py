"""The core's I/O threads are batch threads on Linux (``src/runtime.rs``): their wake-ups
do not preempt the event loop. ``MCP_DB_IO_SCHED=normal`` keeps the system's default, and
any other value is refused with a clear error. The recipe for several workers on one busy
host, every thread a batch thread (``chrt --batch 0``, docs/deploy/workers.md), serves."""

from __future__ import annotations

import os
import subprocess
import sys

import anyio
import pytest
import redis

from mcp_db._core import key_layout
from tests._client import client_session, result_text
from tests._nodes import BATCH, Node
from tests.support.redis_server import RedisServer

# The core's runtime, not the SDK: see tests/conftest.py.
pytestmark = [
    pytest.mark.one_sdk_line,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux policy"),
]

#: Connects a store (which starts the I/O threads) and prints each I/O thread's policy.
SCRIPT = """
import asyncio, os, sys
from mcp_db import RedisEventStore

async def main():
    store = RedisEventStore(sys.argv[1], prefix="runtime")
    await store.connect()
    await store.for_session("s").store_event("1", None)
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm") as comm:
            if comm.read().strip() == "mcp-db-io":
                print(os.sched_getscheduler(int(tid)))

asyncio.run(main())
"""


def run(redis_server: RedisServer, **env: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", SCRIPT, redis_server.url]
    environ = {k: v for k, v in os.environ.items() if k != "MCP_DB_IO_SCHED"}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=60, env={**environ, **env}
    )


def policies(redis_server: RedisServer, **env: str) -> set[int]:
    """The policies of the I/O threads of a process that used the core (there is one at
    least)."""
    done = run(redis_server, **env)
    assert done.returncode == 0, done.stderr
    found = [int(line) for line in done.stdout.split()]
    assert found, "an I/O thread"
    return set(found)


def test_the_io_threads_are_batch_threads(redis_server: RedisServer) -> None:
    assert policies(redis_server) == {os.SCHED_BATCH}


def test_normal_keeps_the_default_policy(redis_server: RedisServer) -> None:
    assert policies(redis_server, MCP_DB_IO_SCHED="normal") == {os.SCHED_OTHER}


def test_an_unknown_policy_is_refused(redis_server: RedisServer) -> None:
    done = run(redis_server, MCP_DB_IO_SCHED="fifo")
    assert done.returncode != 0
    assert "MCP_DB_IO_SCHED must be 'batch' or 'normal', not \"fifo\"" in done.stderr


def test_workers_under_chrt_batch_serve_one_session_across_them(
    redis_server: RedisServer, prefix: str
) -> None:
    """``chrt --batch 0 uvicorn --workers 3``: one session's requests, each on a connection
    of its own, spread over the workers and are relayed among them (the owner's claim keys
    show it); every thread of every worker (the event loop, the core's I/O thread, the
    SDK's worker threads) is a batch thread, and so is the supervisor."""
    env = {"MCP_DB_REDIS_URL": redis_server.url, "MCP_DB_PREFIX": prefix, "MCP_DB_MIDDLEWARE": "1"}
    node = Node(env=env, workers=3, wrapper=BATCH).start()
    try:
        workers = node.worker_pids()

        async def calls() -> None:
            async with client_session(node.url, fresh_connections=True) as session:
                for i in range(12):
                    result = await session.call_tool("echo", {"text": f"call {i}"})
                    assert result_text(result) == f"call {i}"

        anyio.run(calls)
        # Each request the owner ran for another worker left its claim key (60 s).
        with redis.Redis.from_url(redis_server.url) as client:
            claims = dict(key_layout(prefix))["claim"]
            assert list(client.scan_iter(claims)), "no request was relayed"
        assert node.process is not None
        for pid in (node.process.pid, *workers):
            threads = {int(tid) for tid in os.listdir(f"/proc/{pid}/task")}
            found = {tid: os.sched_getscheduler(tid) for tid in threads}
            assert set(found.values()) == {os.SCHED_BATCH}, (pid, found)
            if pid in workers:
                assert len(threads) > 2, "the loop, the I/O thread and the SDK's workers"
    finally:
        node.stop()
