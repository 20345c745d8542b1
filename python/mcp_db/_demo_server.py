"""The small MCP server that ``mcp-db demo`` runs on each node, built the ordinary way with the
installed SDK plus mcp-db (``examples/server.py`` is the annotated version of it).

``uvicorn mcp_db._demo_server:app``; with ``MCP_DB_REDIS_URL`` events and sessions live in
Redis and the app is wrapped in ``SessionMiddleware``, otherwise one process keeps them in
memory. ``NODE_NAME`` names the node in the ``where`` tool's answers.
"""

# No `from __future__ import annotations`: FastMCP 1.x inspects real annotations.
import importlib
import inspect
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from mcp_db import MemoryEventStore, RedisEventStore, SessionMiddleware

if TYPE_CHECKING:
    Context = Any
else:
    try:  # mcp 2.x
        from mcp.server.mcpserver import Context
    except ImportError:  # mcp 1.x
        from mcp.server.fastmcp import Context

F = TypeVar("F", bound=Callable[..., Any])

#: Clients wait this long (ms) before resuming a cut stream.
RETRY_MS = 1000

redis_url = os.environ.get("MCP_DB_REDIS_URL")
store: Any = (
    RedisEventStore(redis_url, prefix=os.environ.get("MCP_DB_PREFIX", "mcp"))
    if redis_url
    else MemoryEventStore()
)

try:  # mcp 2.x
    from mcp.server.mcpserver import MCPServer

    server: Any = MCPServer("mcp-db-demo")
    SDK_2 = True
except ImportError:  # mcp 1.x: the store goes to FastMCP itself
    FastMCP: Any = importlib.import_module("mcp.server.fastmcp").FastMCP
    options: dict[str, Any] = {"event_store": store}
    if "retry_interval" in inspect.signature(FastMCP).parameters:  # 1.23 and later
        options["retry_interval"] = RETRY_MS
    server = FastMCP("mcp-db-demo", **options)
    SDK_2 = False


def tool(fn: F) -> F:
    server.tool()(fn)
    return fn


def resource(uri: str) -> Callable[[F], F]:
    def register(fn: F) -> F:
        server.resource(uri)(fn)
        return fn

    return register


def prompt(fn: F) -> F:
    server.prompt()(fn)
    return fn


@tool
async def count(n: int, ctx: Context, cut_at: int = 0) -> str:
    """Counts to n, reporting progress; after step ``cut_at`` the server drops the stream
    (on SDKs that can: 1.23 and later)."""
    for i in range(1, n + 1):
        await ctx.report_progress(i, n, f"step {i}")
        if i == cut_at and hasattr(ctx, "close_sse_stream"):
            await ctx.close_sse_stream()  # as if the connection had dropped
        await anyio.sleep(0.05)
    return f"counted to {n}"


@tool
def store_stats() -> dict[str, int]:
    """The event store's counters (stored, replayed, ...), to see resumption at work."""
    stats: dict[str, int] = store.stats()
    return stats


@tool
def where() -> str:
    """Which node and process served this request."""
    return f"{os.environ.get('NODE_NAME', 'node')} pid {os.getpid()}"


@resource("note://hello")
def hello() -> str:
    """A fixed note."""
    return "hello from mcp-db"


@prompt
def review(code: str) -> str:
    """Asks for a review of a piece of code."""
    return f"Please review this code:\n\n{code}"


if SDK_2:
    app: Any = server.streamable_http_app(event_store=store, retry_interval=RETRY_MS)
else:  # 1.x: the store was given to FastMCP above
    app = server.streamable_http_app()

if isinstance(store, RedisEventStore):
    app = SessionMiddleware(app, store=store)
else:
    store.attach(server.session_manager)
