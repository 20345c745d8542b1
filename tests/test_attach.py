"""attach() on the SDK's own StreamableHTTPSessionManager."""

from __future__ import annotations

from typing import Any

import pytest
from mcp.server.lowlevel import Server
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

from mcp_db import ConfigError, MemoryEventStore, SessionEventStore


def transport(session_id: str, store: Any) -> StreamableHTTPServerTransport:
    return StreamableHTTPServerTransport(mcp_session_id=session_id, event_store=store)


def manager(**kwargs: Any) -> StreamableHTTPSessionManager:
    return StreamableHTTPSessionManager(app=Server("t"), **kwargs)


def test_binds_each_registered_transport_to_its_session() -> None:
    store = MemoryEventStore()
    m = manager(event_store=store)
    store.attach(m)
    a, b = transport("sess-a", store), transport("sess-b", store)
    m._server_instances["sess-a"] = a
    m._server_instances["sess-b"] = b
    assert isinstance(a._event_store, SessionEventStore) and a._event_store.session_id == "sess-a"
    assert isinstance(b._event_store, SessionEventStore) and b._event_store.session_id == "sess-b"
    assert bool(a._event_store), "the SDK tests `if self._event_store:`"


def test_is_idempotent_and_binds_sessions_already_open() -> None:
    store = MemoryEventStore()
    m = manager(event_store=store)
    early = transport("early", store)
    m._server_instances["early"] = early
    store.attach(m)
    store.attach(m)
    assert early._event_store.session_id == "early"
    assert list(m._server_instances) == ["early"]


def test_adopts_a_manager_built_without_a_store() -> None:
    store = MemoryEventStore()
    m = manager()
    store.attach(m)
    assert m.event_store is store


def test_refuses_a_manager_of_another_store() -> None:
    m = manager(event_store=MemoryEventStore())
    with pytest.raises(ConfigError, match="event_store="):
        MemoryEventStore().attach(m)


def test_leaves_stateless_managers_alone() -> None:
    store = MemoryEventStore()
    m = manager(stateless=True)
    store.attach(m)
    assert m.event_store is None
    assert type(m._server_instances) is dict


def test_refuses_what_is_not_a_session_manager() -> None:
    with pytest.raises(ConfigError, match="StreamableHTTPSessionManager"):
        MemoryEventStore().attach(object())
