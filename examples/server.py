"""An MCP server on the official SDK, ready to run on one node or on many behind a load balancer.

It runs on every supported SDK line; on mcp < 1.23 the ``count`` tool cannot cut its stream
(server-side stream close and retry intervals came with SEP-1699). ``make demo`` runs it.

One process, events in memory::

    uvicorn examples.server:app --port 8000

Any number of nodes sharing one Redis (run this on every node, behind any load balancer)::

    MCP_DB_REDIS_URL=redis://127.0.0.1:6379/0 NODE_NAME=node-a uvicorn examples.server:app

Environment:

- ``MCP_DB_REDIS_URL``: with it, events and sessions live in Redis and the app is wrapped
  in ``SessionMiddleware``, so every node serves every session, and a change published on
  any node (``edit_note``) reaches the clients of every node, in both protocol eras
  (``RedisSubscriptionBus``); without it, the in-process ``MemoryEventStore`` serves one
  process.
- ``MCP_DB_PREFIX``: the prefix of mcp-db's Redis keys (``mcp`` unless given).
- ``MCP_ALLOWED_HOSTS``: comma-separated ``host[:port]`` patterns (``mcp.example.com``,
  ``mcp:*``) that the SDK's DNS-rebinding protection lets through. By default only local
  hosts (``127.0.0.1:*``, ``localhost:*``, ``[::1]:*``) are accepted; a load balancer that
  passes on a public ``Host`` header needs this.
- ``NODE_NAME``: this node's name in the answers of the ``where`` tool.
"""

# No `from __future__ import annotations`: FastMCP 1.x inspects real annotations.
import inspect
import os

import anyio
from mcp.server.transport_security import TransportSecuritySettings

from mcp_db import MemoryEventStore, RedisEventStore, RedisSubscriptionBus, SessionMiddleware

# Clients wait this long (ms) before resuming a cut stream; it is also the SDK client's
# default. A stream resumed through another node is relayed to the session's owner, which
# replays what the store holds and then goes on live (docs/relay.md).
RETRY_MS = 1000

redis_url = os.environ.get("MCP_DB_REDIS_URL")
store = (
    RedisEventStore(redis_url, prefix=os.environ.get("MCP_DB_PREFIX", "mcp"))
    if redis_url
    else MemoryEventStore()
)
# One publish reaches every client that asked, on every node: 2026-07-28 listen streams
# (the server's bus) and handshake-era sessions (SessionMiddleware's bus, below).
bus = RedisSubscriptionBus(store) if isinstance(store, RedisEventStore) else None

# Without MCP_ALLOWED_HOSTS, None keeps the SDK's default: protection on, local hosts only.
allowed_hosts = [h.strip() for h in os.environ.get("MCP_ALLOWED_HOSTS", "").split(",") if h.strip()]
security = (
    TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=allowed_hosts,
        allowed_origins=[],  # a request with an Origin header (a browser's) is refused
    )
    if allowed_hosts
    else None
)

try:  # mcp 2.x
    from mcp.server.mcpserver import Context, MCPServer

    server = MCPServer("mcp-db-example", **({"subscriptions": bus} if bus else {}))
    SDK_2 = True
except ImportError:  # mcp 1.x
    from mcp.server.fastmcp import Context, FastMCP

    options = {"event_store": store, "transport_security": security}
    if "retry_interval" in inspect.signature(FastMCP).parameters:  # 1.23 and later
        options["retry_interval"] = RETRY_MS
    server = FastMCP("mcp-db-example", **options)
    SDK_2 = False


@server.tool()
async def count(n: int, ctx: Context, cut_at: int = 0) -> str:
    """Counts to n, reporting progress; after step ``cut_at`` the server drops the stream
    (on SDKs that can: 1.23 and later)."""
    for i in range(1, n + 1):
        await ctx.report_progress(i, n, f"step {i}")
        if i == cut_at and hasattr(ctx, "close_sse_stream"):
            await ctx.close_sse_stream()  # as if the connection had dropped
        await anyio.sleep(0.05)
    return f"counted to {n}"


@server.tool()
def store_stats() -> dict[str, int]:
    """The event store's counters (stored, replayed, ...), to see resumption at work."""
    return store.stats()


@server.tool()
def where() -> str:
    """Which node and process served this request."""
    return f"{os.environ.get('NODE_NAME', 'node')} pid {os.getpid()}"


NOTE = {"text": "hello from mcp-db"}


@server.resource("note://hello")
def hello() -> str:
    """A note that ``edit_note`` changes."""
    return NOTE["text"]


@server.tool()
async def edit_note(text: str, ctx: Context) -> str:
    """Changes ``note://hello`` and tells every client subscribed to it, on every node. (The
    note lives in this process; a real server keeps what it serves in a shared database.)"""
    NOTE["text"] = text
    if bus is not None:
        await bus.notify_resource_updated("note://hello")  # on 2.x: ctx.notify_resource_updated
    else:  # one process, handshake era: the SDK's own way, this session only
        await ctx.session.send_resource_updated("note://hello")
    return "saved"


@server.prompt()
def review(code: str) -> str:
    """Asks for a review of a piece of code."""
    return f"Please review this code:\n\n{code}"


if SDK_2:
    app = server.streamable_http_app(
        event_store=store, retry_interval=RETRY_MS, transport_security=security
    )
else:  # 1.x: the store and the security settings were given to FastMCP above
    app = server.streamable_http_app()

if isinstance(store, RedisEventStore):
    # Any node serves any session: sessions are recorded in Redis; a request that lands on a
    # node other than the session's owner is relayed to the owner through Redis, and a
    # survivor takes the session over if the owner dies. It also binds each session to its
    # own events.
    app = SessionMiddleware(app, store=store, bus=bus)
else:
    # One process: one line binds each session to its own events (no cross-session replay).
    store.attach(server.session_manager)
