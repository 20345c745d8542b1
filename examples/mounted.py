"""Two MCP servers mounted in one Starlette app, on many nodes: wrap the parent app once.
Each server keeps its sessions under its own Redis prefix (``mcp:/notes/mcp``,
``mcp:/search/mcp``), and the parent's other routes pass through.

    MCP_DB_REDIS_URL=redis://127.0.0.1:6379/0 uvicorn examples.mounted:app --workers 4
"""

import contextlib
import os

from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from mcp_db import RedisEventStore, SessionMiddleware

redis_url = os.environ["MCP_DB_REDIS_URL"]
store = RedisEventStore(redis_url, prefix=os.environ.get("MCP_DB_PREFIX", "mcp"))
notes, search = MCPServer("notes"), MCPServer("search")


@notes.tool()
def add(text: str) -> str:
    """Adds a note."""
    return f"added {text!r}"


@search.tool()
def find(query: str) -> str:
    """Finds notes."""
    return f"nothing matches {query!r}"


@contextlib.asynccontextmanager
async def lifespan(app: Starlette):
    async with notes.session_manager.run(), search.session_manager.run():
        yield


async def health(request):
    return PlainTextResponse("ok")


parent = Starlette(
    routes=[
        Route("/health", health),
        Mount("/notes", notes.streamable_http_app(event_store=store)),
        Mount("/search", search.streamable_http_app(event_store=store)),
    ],
    lifespan=lifespan,
)
app = SessionMiddleware(parent, store=store)
