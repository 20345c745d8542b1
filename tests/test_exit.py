"""A process using the core exits cleanly: no I/O thread calls into a finalizing
interpreter (which aborts the process with SIGABRT, as short-lived commands such as
``mcp-db sessions close`` did about one run in ten)."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.redis_server import RedisServer

# The core's threads at exit, not the SDK: see tests/conftest.py.
pytestmark = pytest.mark.one_sdk_line

SCRIPT = """
import asyncio, sys
from mcp_db import RedisEventStore

async def main():
    store = RedisEventStore(sys.argv[1], prefix="exit")
    await store.connect()
    await store.deployment.bus().closed("nobody")
    await store.deployment.relay("exit-node").ready(2000)
    await store.for_session("s").store_event("1", None)

asyncio.run(main())
"""
# The abort this guards against came about 3 times in 450 such runs before the fix (the
# core's threads no longer take the GIL at all); 12 keep the suite's time in bounds.
RUNS = 12


def test_short_lived_processes_exit_with_status_0(redis_server: RedisServer) -> None:
    def run(_: int) -> int:
        command = [sys.executable, "-c", SCRIPT, redis_server.url]
        return subprocess.run(command, capture_output=True, timeout=60).returncode

    # Two at a time: the abort needs an I/O thread busy while the interpreter finalizes.
    with ThreadPoolExecutor(max_workers=2) as pool:
        codes = list(pool.map(run, range(RUNS)))
    assert codes == [0] * RUNS, codes
