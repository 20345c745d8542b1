"""The baseline: a plain redis-py event store with mcp-db's key layout, written for the benchmark.

It is what a competent developer would write with ``redis.asyncio`` and nothing else: one
shared connection pool, raw bytes (``decode_responses=False``), one Redis stream per
(session, stream) at ``{prefix}:e:{<session>}:<stream>``, and

* ``store_event``: one non-transactional pipeline, ``XADD key MAXLEN ~ N * d <json>`` plus
  ``EXPIRE key ttl``, one round trip; the event ID is ``<session>:<stream>:<entry-id>``;
* ``replay_events_after``: ``XRANGE key (<entry-id> + COUNT 500`` page by page, each message
  rebuilt with the SDK's own union validation (``jsonrpc_message_adapter.validate_json``,
  as the SDK's transports parse incoming JSON) and handed to the callback.

Messages are serialized as the SDK's transport does:
``message.model_dump_json(by_alias=True, exclude_unset=True)``. Priming events
(``message is None``) are stored with empty data and never replayed.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from mcp.server.streamable_http import (
    EventCallback,
    EventId,
    EventMessage,
    EventStore,
    StreamId,
)
from mcp_types import jsonrpc_message_adapter

__all__ = ["RedisPyEventStore", "RedisPySessionStore"]

_FIELD = b"d"


class RedisPyEventStore:
    """Owns the connection pool and the settings; hands out one view per session."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "mcp",
        ttl_seconds: int = 3600,
        max_events_per_stream: int = 10_000,
        page_size: int = 500,
    ) -> None:
        self.redis: aioredis.Redis = aioredis.Redis.from_url(url, decode_responses=False)
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds
        self.max_events_per_stream = max_events_per_stream
        self.page_size = page_size

    def for_session(self, session_id: str) -> RedisPySessionStore:
        if not session_id or ":" in session_id:
            raise ValueError(f"session id must be non-empty and without ':', got {session_id!r}")
        return RedisPySessionStore(self, session_id)

    def key(self, session_id: str, stream_id: str) -> str:
        return f"{self.prefix}:e:{{{session_id}}}:{stream_id}"

    async def connect(self) -> None:
        await self.redis.ping()

    async def close(self) -> None:
        await self.redis.aclose()


class RedisPySessionStore(EventStore):
    """The SDK's ``EventStore`` interface for one session."""

    def __init__(self, store: RedisPyEventStore, session_id: str) -> None:
        self._store = store
        self._redis = store.redis
        self.session_id = session_id

    async def store_event(self, stream_id: StreamId, message: Any) -> EventId:
        stream = str(stream_id)
        key = self._store.key(self.session_id, stream)
        data = (
            b"" if message is None else message.model_dump_json(by_alias=True, exclude_unset=True)
        )
        pipe = self._redis.pipeline(transaction=False)
        pipe.xadd(
            key,
            {_FIELD: data},
            maxlen=self._store.max_events_per_stream,
            approximate=True,
        )
        pipe.expire(key, self._store.ttl_seconds)
        entry_id, _ = await pipe.execute()
        return f"{self.session_id}:{stream}:{entry_id.decode()}"

    async def replay_events_after(
        self, last_event_id: EventId, send_callback: EventCallback
    ) -> StreamId | None:
        # <session>:<stream>:<entry-id>; the session has no ':', the stream may.
        session, sep, rest = last_event_id.partition(":")
        stream, sep2, entry = rest.rpartition(":")
        if not (sep and sep2 and stream) or session != self.session_id:
            return None
        key = self._store.key(session, stream)
        id_prefix = f"{session}:{stream}:"
        page_size = self._store.page_size
        validate = jsonrpc_message_adapter.validate_json
        start = "(" + entry
        first = True
        while True:
            page = await self._redis.xrange(key, min=start, max="+", count=page_size)
            if first and not page and not await self._redis.exists(key):
                return None  # unknown or expired stream
            first = False
            for entry_id, fields in page:
                data = fields.get(_FIELD)
                if not data:
                    continue  # priming event
                message = validate(data, by_name=False)
                await send_callback(EventMessage(message, id_prefix + entry_id.decode()))
            if len(page) < page_size:
                return stream
            start = "(" + page[-1][0].decode()
