"""An MCP server on the official SDK whose streams resume from mcp-db's event store.

Needs mcp >= 1.23 (server-side stream close and retry intervals came with SEP-1699).

    MCP_DB_REDIS_URL=redis://127.0.0.1:6379/0 uvicorn examples.server:app --port 8000

Without ``MCP_DB_REDIS_URL`` it uses the in-process ``MemoryEventStore``.
"""

import os

import anyio

from mcp_db import MemoryEventStore, RedisEventStore

redis_url = os.environ.get("MCP_DB_REDIS_URL")
store = RedisEventStore(redis_url) if redis_url else MemoryEventStore()

try:  # mcp 2.x
    from mcp.server.mcpserver import Context, MCPServer

    server = MCPServer("mcp-db-example")
except ImportError:  # mcp 1.x
    from mcp.server.fastmcp import Context, FastMCP

    server = FastMCP("mcp-db-example", event_store=store, retry_interval=200)


@server.tool()
async def count(n: int, ctx: Context, cut_at: int = 0) -> str:
    """Counts to n, reporting progress; after step ``cut_at`` the server drops the stream."""
    for i in range(1, n + 1):
        await ctx.report_progress(i, n, f"step {i}")
        if i == cut_at:
            await ctx.close_sse_stream()  # as if the connection had dropped
        await anyio.sleep(0.05)
    return f"counted to {n}"


@server.tool()
def store_stats() -> dict[str, int]:
    """The event store's counters (stored, replayed, ...), to see resumption at work."""
    return store.stats()


if hasattr(server, "settings"):  # 1.x: the store was given to FastMCP above
    app = server.streamable_http_app()
else:
    app = server.streamable_http_app(event_store=store, retry_interval=200)
# One line binds each session to its own events: no cross-session replay.
store.attach(server.session_manager)
