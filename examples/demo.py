"""`make demo`: an SDK server with mcp-db's store, and the SDK's client whose stream is
cut mid-call and resumes with Last-Event-ID, missing nothing."""

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from mcp_db._redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
N, CUT_AT = 12, 4


def start_server(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "examples.server:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the example server did not start") from None
            time.sleep(0.05)


async def drive(url: str) -> tuple[list[int], dict[str, int]]:
    seen: list[int] = []
    start = time.monotonic()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(int(progress))
        print(f"  {time.monotonic() - start:6.3f}s  progress {int(progress):2}/{N}")

    async with (
        streamable_http_client(url) as streams,
        ClientSession(streams[0], streams[1]) as session,
    ):
        init = await session.initialize()
        version = getattr(init, "protocol_version", None) or init.protocolVersion  # 2.x / 1.x
        print(f"session open, protocol {version}")
        print(f"calling count(n={N}); the server drops the stream after step {CUT_AT}")
        result = await session.call_tool(
            "count", {"n": N, "cut_at": CUT_AT}, progress_callback=on_progress
        )
        print(f"result: {result.content[0].text}")
        stats = await session.call_tool("store_stats", {})
    return seen, json.loads(stats.content[0].text)


def main() -> int:
    redis = None
    env: dict[str, str] = {}
    if shutil.which("redis-server"):
        redis = RedisServer().start()
        env["MCP_DB_REDIS_URL"] = redis.url
        print(f"store: RedisEventStore on a redis-server started for the demo ({redis.url})")
    else:
        print("store: MemoryEventStore (redis-server is not installed; events stay in the server)")
    port = free_port()
    server = start_server(port, env)
    try:
        seen, stats = asyncio.run(drive(f"http://127.0.0.1:{port}/mcp"))
    finally:
        server.terminate()
        server.wait(timeout=10)
        if redis is not None:
            redis.cleanup()
    ok = seen == list(range(1, N + 1))
    print(
        f"summary: {len(seen)} of {N} progress notifications, each exactly once and in order; "
        f"the client resumed with Last-Event-ID and the store replayed the {stats['replayed']} "
        "it had missed while away"
        if ok
        else f"summary: FAILED, the client saw {seen}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
