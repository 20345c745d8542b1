"""A FastMCP 4 server (PrefectHQ's ``fastmcp``) built the ordinary way, plus mcp-db.

The same tools as ``app.py`` where the scenarios need them (progress with a cut stream,
sampling and elicitation, a resource, a prompt, ``whoami``), written against FastMCP's own
API. Run by the tests under uvicorn (or gunicorn) in a subprocess. Configured by
environment, as ``app.py``:

- ``MCP_DB_REDIS_URL``, ``MCP_DB_PREFIX``: the Redis store (``MCP_DB_STORE=none``: no
  event store at all, the benchmark's bare FastMCP)
- ``MCP_RETRY_MS``: the SSE ``retry`` the server sends (100 ms unless given)
- ``MCP_DB_MIDDLEWARE``: wrap the app in ``SessionMiddleware`` (else the store alone,
  ``store.attach(app)``); ``MCP_DB_LEASE_SECONDS`` and ``MCP_DB_SESSION_TTL`` set its
  options
- ``MCP_DB_FASTMCP_STATE``: ``redis`` keeps FastMCP's session state (``ctx.set_state``) in
  Redis, as a deployment of several nodes must (docs/deploy/fastmcp.md)
"""

import os
from typing import Any

import anyio
from fastmcp import Context, FastMCP
from mcp.server.request_state import RequestStateSecurity
from mcp.types import SamplingMessage, TextContent
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse

from mcp_db import RedisEventStore

REDIS_URL = os.environ.get("MCP_DB_REDIS_URL", "redis://127.0.0.1:6379/0")
store: Any = None
if os.environ.get("MCP_DB_STORE") != "none":  # "none": FastMCP alone, for the benchmark
    store = RedisEventStore(REDIS_URL, prefix=os.environ.get("MCP_DB_PREFIX", "mcp"))
RETRY_MS = int(os.environ.get("MCP_RETRY_MS", "100"))

# Every node shares its request-state keys, as a deployment must (docs/deploy/2026-clients.md).
key = os.environ.get("MCP_DB_REQUEST_STATE_KEY", "6d63702d6462" + "20" * 26)
options: dict[str, Any] = {
    "request_state_security": RequestStateSecurity(keys=[bytes.fromhex(key)]),
}
if os.environ.get("MCP_DB_FASTMCP_STATE") == "redis":
    from key_value.aio.stores.redis import RedisStore

    options["session_state_store"] = RedisStore(url=REDIS_URL)

mcp: Any = FastMCP("mcp-db-fastmcp-test", **options)


@mcp.tool
async def steps(n: int, ctx: Context, cut_at: int = -1, delay: float = 0.01) -> str:
    """Reports n progress steps, cutting the stream after step ``cut_at``."""
    for i in range(n):
        await ctx.report_progress(i, n, f"step {i}")
        if i == cut_at:
            await ctx.close_sse_stream()
        await anyio.sleep(delay)
    return f"done {n}"


@mcp.tool
def echo(text: str) -> str:
    """Returns its argument."""
    return text


@mcp.tool
async def whoami(ctx: Context) -> str:
    """The client name this node believes the session has (from its initialize)."""
    info = ctx.session.client_params.client_info
    return f"{info.name} on {os.getpid()}"


class Verdict(BaseModel):
    ok: bool
    note: str


@mcp.tool
async def ask(question: str, ctx: Context) -> str:
    """Asks the client's model (sampling), then the user (elicitation), and combines both."""
    sampled = await ctx.session.create_message(
        messages=[SamplingMessage(role="user", content=TextContent(type="text", text=question))],
        max_tokens=32,
        related_request_id=ctx.request_id,
    )
    answer = sampled.content.text
    verdict = await ctx.elicit(f"Is {answer!r} right?", response_type=Verdict)
    if verdict.action != "accept":
        return f"{answer} | {verdict.action}"
    return f"{answer} | ok={verdict.data.ok} note={verdict.data.note}"


@mcp.tool
async def remember(key: str, value: str, ctx: Context) -> str:
    """Keeps ``value`` in FastMCP's session state."""
    await ctx.set_state(key, value)
    return f"kept on {os.getpid()}"


@mcp.tool
async def recall(key: str, ctx: Context) -> str:
    """Reads FastMCP's session state."""
    return f"{await ctx.get_state(key)} on {os.getpid()}"


@mcp.resource("note://greeting")
def greeting() -> str:
    """A fixed resource."""
    return "hello from a resource"


@mcp.prompt
def review(code: str) -> str:
    """A prompt with one argument."""
    return f"Please review: {code}"


@mcp.custom_route("/debug/pid", methods=["GET"])
async def pid(request: Request) -> JSONResponse:
    """Test-only: which process answered (tells worker processes apart)."""
    return JSONResponse({"pid": os.getpid()})


@mcp.custom_route("/debug/stats", methods=["GET"])
async def stats(request: Request) -> JSONResponse:
    """Test-only: this node's counters (the middleware's, if the app has it)."""
    counts = app.stats() if hasattr(app, "stats") else None
    return JSONResponse({"middleware": counts, "store": store.stats() if store else None})


app: Any = mcp.http_app(event_store=store, retry_interval=RETRY_MS)
if os.environ.get("MCP_DB_MIDDLEWARE"):
    from mcp_db import SessionMiddleware

    settings: dict[str, Any] = {}
    if os.environ.get("MCP_DB_LEASE_SECONDS"):
        settings["lease_seconds"] = float(os.environ["MCP_DB_LEASE_SECONDS"])
    if os.environ.get("MCP_DB_SESSION_TTL"):
        settings["session_ttl_seconds"] = float(os.environ["MCP_DB_SESSION_TTL"])
    app = SessionMiddleware(app, store=store, **settings)
elif store is not None:
    store.attach(app)
