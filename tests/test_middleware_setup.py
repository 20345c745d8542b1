"""SessionMiddleware's set-up: what it refuses, and what it leaves alone."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.applications import Starlette

from mcp_db import ConfigError, MemoryEventStore, RedisEventStore, SessionMiddleware
from mcp_db.middleware import find_session_manager

URL = "redis://127.0.0.1:1/0"  # never contacted: nothing here needs Redis


def manager(**kwargs: Any) -> StreamableHTTPSessionManager:
    return StreamableHTTPSessionManager(app=Server("t"), **kwargs)


def test_a_stateless_manager_is_left_untouched() -> None:
    m = manager(stateless=True)
    entry = getattr(m, "asgi_app", None) or m.handle_request
    middleware = SessionMiddleware(Starlette(), store=RedisEventStore(URL), session_manager=m)
    assert middleware._build() == []
    assert (getattr(m, "asgi_app", None) or m.handle_request) == entry
    assert m.event_store is None


def test_a_stateful_manager_is_attached_and_hooked_when_the_app_starts() -> None:
    store = RedisEventStore(URL)
    m = manager()
    entry = getattr(m, "asgi_app", None) or m.handle_request
    middleware = SessionMiddleware(Starlette(), store=store, session_manager=m)
    # Nothing before the app starts: a forking server forks after building the app.
    assert m.event_store is None
    assert (getattr(m, "asgi_app", None) or m.handle_request) == entry
    [endpoint] = middleware._build()
    assert m.event_store is store
    hooked = getattr(m, "asgi_app", None) if hasattr(m, "asgi_app") else m.handle_request
    assert hooked == endpoint.handle


# mcp 1.12's FastMCP settings trip a pydantic-settings warning on newer pydantic.
@pytest.mark.filterwarnings("ignore:Field 'lifespan' has an incomplete definition")
def test_the_manager_is_found_inside_an_sdk_app() -> None:
    try:
        from mcp.server.mcpserver import MCPServer

        server: Any = MCPServer("t")
    except ImportError:
        from mcp.server.fastmcp import FastMCP

        server = FastMCP("t")
    app = server.streamable_http_app()
    assert find_session_manager(app) is server.session_manager


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"store": MemoryEventStore()}, "needs a RedisEventStore"),
        ({"session_ttl_seconds": 0}, "session_ttl_seconds"),
        ({"session_ttl_seconds": "60"}, "session_ttl_seconds"),
        ({"relay_secret": "short"}, "relay secret has 5 bytes; use at least 16"),
        ({"relay_secret": 12345}, "relay_secret must be bytes or str"),
        ({"node_id": ""}, "node_id must be a non-empty string, got ''"),
        ({"node_id": 7}, "node_id must be a non-empty string, got 7"),
    ],
)
def test_bad_options_raise_value_error(kwargs: dict[str, Any], match: str) -> None:
    options: dict[str, Any] = {"store": RedisEventStore(URL), "session_manager": manager()}
    with pytest.raises(ValueError, match=match):
        SessionMiddleware(Starlette(), **{**options, **kwargs})


def test_the_relay_secret_comes_from_the_environment_when_not_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    options: dict[str, Any] = {"store": RedisEventStore(URL), "session_manager": manager()}
    monkeypatch.setenv("MCP_DB_RELAY_SECRET", "too short")
    with pytest.raises(ConfigError, match="relay secret has 9 bytes"):
        SessionMiddleware(Starlette(), **options)
    SessionMiddleware(Starlette(), relay_secret=b"given, so the environment is not read", **options)


async def test_an_app_without_a_session_manager_fails_its_startup() -> None:
    middleware = SessionMiddleware(Starlette(), store=RedisEventStore(URL))
    sent: list[dict[str, Any]] = []
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def receive() -> dict[str, Any]:
        return next(incoming)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await middleware({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert sent[0]["type"] == "lifespan.startup.failed"
    assert "no StreamableHTTPSessionManager found in the app once it started" in sent[0]["message"]


def test_importing_the_store_alone_leaves_the_sdk_untouched() -> None:
    # On mcp 1.x the middleware swaps the SDK's ServerSession class; only its users get that.
    code = (
        "import sys, mcp_db\n"
        "from mcp.server.lowlevel import server\n"
        "assert 'mcp_db.middleware' not in sys.modules\n"
        "session_class = getattr(server, 'ServerSession', None)  # 1.x only\n"
        "assert session_class is None or session_class.__module__ == 'mcp.server.session'\n"
        "mcp_db.SessionMiddleware\n"
        "assert 'mcp_db.middleware' in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_the_sdk_is_made_ready_to_rebuild_sessions_by_the_middleware_not_by_an_import() -> None:
    # On mcp 1.x, rebuilt sessions need the SDK's ServerSession class swapped. The swap is
    # made when a SessionMiddleware starts (idempotently), whatever was imported first.
    code = (
        "import mcp_db.middleware, mcp_db._sdk.rehydrate\n"
        "from mcp.server.lowlevel import server\n"
        "from mcp.server.lowlevel import Server\n"
        "from mcp.server.streamable_http_manager import StreamableHTTPSessionManager as M\n"
        "from starlette.applications import Starlette\n"
        "from mcp_db import RedisEventStore, SessionMiddleware\n"
        "original = getattr(server, 'ServerSession', None)  # 1.x only\n"
        "assert original is None or original.__module__ == 'mcp.server.session'\n"
        "for _ in range(2):\n"
        "    SessionMiddleware(Starlette(), store=RedisEventStore('redis://127.0.0.1:1/0'),\n"
        "                      session_manager=M(app=Server('t')))._build()\n"
        "swapped = getattr(server, 'ServerSession', None)\n"
        "assert original is None or swapped.__module__ == 'mcp_db._sdk.session_v1', swapped\n"
        "assert original is None or swapped.__mro__[1] is original\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_two_middlewares_on_one_prefix_in_one_process_are_refused() -> None:
    # Each would subscribe to the node's relay channels and take the other's requests.
    store = RedisEventStore(URL, prefix="shared")
    first = SessionMiddleware(Starlette(), store=store, session_manager=manager())
    second = SessionMiddleware(Starlette(), store=store, session_manager=manager())
    assert len(first._build()) == 1
    with pytest.raises(ConfigError, match="two SessionMiddleware in this process serve prefix"):
        second._build()
    other = RedisEventStore(URL, prefix="another")
    assert len(SessionMiddleware(Starlette(), store=other, session_manager=manager())._build()) == 1
