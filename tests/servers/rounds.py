"""An MCP server (mcp 2.x) with a tool that asks the user several questions, one per
round, in the 2026-07-28 way: each round returns an ``InputRequiredResult`` whose
``requestState`` the SDK seals, and the client's next round brings it back, to whichever
node the load balancer picks. The state records the pid of every process that served a
round, and the final answer lists them, so a test sees where the rounds ran.

Run by the tests under uvicorn, wrapped in ``SessionMiddleware`` over ``RedisEventStore``.
Configured by environment:

- ``MCP_DB_REDIS_URL``, ``MCP_DB_PREFIX``: the Redis and the prefix of the deployment
- ``MCP_DB_REQUEST_STATE_KEY``: a secret shared by every node (hex, 32 bytes or more).
  Without it, ``MCPServer``'s default: ephemeral keys, a key per process.
"""

from __future__ import annotations

import json
import os

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.request_state import RequestStateSecurity
from mcp_types import (
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    InputRequiredResult,
)

from mcp_db import RedisEventStore, SessionMiddleware

store = RedisEventStore(
    os.environ.get("MCP_DB_REDIS_URL", "redis://127.0.0.1:6379/0"),
    prefix=os.environ.get("MCP_DB_PREFIX", "mcp"),
)

shared_key = os.environ.get("MCP_DB_REQUEST_STATE_KEY")
security = RequestStateSecurity(keys=[bytes.fromhex(shared_key)]) if shared_key else None
server = MCPServer("mcp-db-rounds", request_state_security=security)


def _question(n: int) -> ElicitRequest:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    return ElicitRequest(
        params=ElicitRequestFormParams(message=f"question {n}", requested_schema=schema)
    )


@server.tool()
async def interview(questions: int, ctx: Context) -> str | InputRequiredResult:
    """Asks ``questions`` questions, one round each, then says which pids served the
    rounds and what the answers were."""
    state = json.loads(ctx.request_state) if ctx.request_state else {"pids": [], "answers": []}
    state["pids"].append(os.getpid())
    for response in (ctx.input_responses or {}).values():
        if isinstance(response, ElicitResult) and response.content:
            state["answers"].append(response.content.get("answer"))
    asked = len(state["pids"]) - 1
    if asked < questions:
        return InputRequiredResult(
            input_requests={f"q{asked + 1}": _question(asked + 1)},
            request_state=json.dumps(state),
        )
    return json.dumps(state)


app = SessionMiddleware(server.streamable_http_app(event_store=store), store=store)
