"""SessionMiddleware on a FastMCP 4 server: per-request latency against the same FastMCP
server without it, on one node, and against FastMCP with no event store at all.

The nodes are the test suite's FastMCP server (``tests/servers/fastmcp_app.py``) under
uvicorn in subprocesses, on the benchmark's redis-server: bare (no event store),
``store.attach(app)`` (the store alone), and wrapped in ``SessionMiddleware``. The client
sends ``tools/call`` requests one after another over a kept-alive connection, alternating
between the nodes in blocks so all three see the same machine. Runs in the FastMCP
virtualenv (``make bench`` does it).
"""

from __future__ import annotations

import statistics
from typing import Any

import httpx

from benches.middleware import _pct, _timed_calls
from tests._nodes import Node
from tests.test_resume_e2e import RawSession

APP = "tests.servers.fastmcp_app:app"


async def measure(redis_url: str, quick: bool) -> list[str]:
    n = 300 if quick else 2000
    env: dict[str, Any] = {"MCP_DB_REDIS_URL": redis_url, "MCP_DB_PREFIX": "bench-fastmcp"}
    nodes = {
        "bare FastMCP": Node(APP, env={**env, "MCP_DB_STORE": "none"}),
        "store alone": Node(APP, env=env),
        "middleware": Node(APP, env={**env, "MCP_DB_MIDDLEWARE": "1"}),
    }
    times: dict[str, list[float]] = {name: [] for name in nodes}
    try:
        for node in nodes.values():
            node.start()
        async with httpx.AsyncClient(timeout=30) as http:
            sessions = {name: await RawSession(http, n.url).open() for name, n in nodes.items()}
            for session in sessions.values():
                await _timed_calls(http, session, 50)
            for block in range(10):
                for name, session in sessions.items():
                    times[name] += await _timed_calls(http, session, n // 10, 1000 + block * n)
    finally:
        for node in nodes.values():
            node.stop()
    p50 = {name: statistics.median(values) for name, values in times.items()}
    overhead = (p50["middleware"] / p50["store alone"] - 1) * 100
    ok = "ok" if overhead <= 10 else "MISSED"
    lines = [f"FastMCP 4, tools/call one after another ({n:,} each, one node)"]
    for name, values in times.items():
        lines.append(
            f"  {name:<14}p50 {p50[name]:6.2f} ms   p99 {_pct(values, 0.99):6.2f} ms"
            f"   {p50[name] / p50['bare FastMCP']:.2f}x bare"
        )
    lines.append(
        f"  middleware p50 overhead over the store alone {overhead:+.1f}%  (target <= 10%: {ok})"
    )
    return lines
