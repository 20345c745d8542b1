"""A FastMCP 4 server on many nodes: run this same module on every node, behind any load
balancer, all nodes sharing one Redis.

    MCP_DB_REDIS_URL=redis://127.0.0.1:6379/0 uvicorn examples.fastmcp_server:app --workers 4
"""

import os

from fastmcp import Context, FastMCP
from key_value.aio.stores.redis import RedisStore
from mcp.server.request_state import RequestStateSecurity

from mcp_db import RedisEventStore, SessionMiddleware

redis_url = os.environ["MCP_DB_REDIS_URL"]
store = RedisEventStore(redis_url, prefix=os.environ.get("MCP_DB_PREFIX", "mcp"))

mcp = FastMCP(
    "notes",
    # ctx.set_state()/get_state() follow the session to whichever node owns it next.
    session_state_store=RedisStore(url=redis_url),
    # 2026-07-28 clients: every node unseals every other node's request state.
    request_state_security=RequestStateSecurity(
        keys=[bytes.fromhex(os.environ["MCP_REQUEST_STATE_KEY"])]
    ),
)


@mcp.tool
async def count(n: int, ctx: Context) -> str:
    """Counts to n, reporting progress."""
    for i in range(n):
        await ctx.report_progress(i + 1, n)
    return f"counted to {n}"


app = SessionMiddleware(mcp.http_app(event_store=store), store=store)
