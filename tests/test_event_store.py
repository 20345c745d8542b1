"""The event stores against the SDK's EventStore contract, on a real redis-server."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mcp_db import (
    ConfigError,
    MemoryEventStore,
    RedisEventStore,
    RedisUnavailableError,
    UnattachedStoreWarning,
)
from mcp_db._core import event_id as make_event_id
from mcp_db._sdk import EventMessage
from tests import _messages as msgs
from tests.support.redis_server import RedisServer, free_port


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Any]:
    if request.param == "memory":
        s: Any = MemoryEventStore()
    else:
        s = RedisEventStore(request.getfixturevalue("redis_server").url, prefix=prefix)
    async with s:
        yield s


class Collector:
    def __init__(self) -> None:
        self.events: list[EventMessage] = []

    async def __call__(self, event: EventMessage) -> None:
        self.events.append(event)

    @property
    def json(self) -> list[str]:
        return [msgs.sdk_json(e.message) for e in self.events]


async def replay(store: Any, last_event_id: Any) -> tuple[Any, Collector]:
    got = Collector()
    stream = await store.replay_events_after(last_event_id, got)
    return stream, got


async def test_replays_every_message_byte_for_byte_in_order(store: Any) -> None:
    view = store.for_session("0123456789abcdef0123456789abcdef")
    priming = await view.store_event("7", None)
    sent = msgs.mixed(7)
    ids = [await view.store_event("7", m) for m in sent]

    stream, got = await replay(view, priming)

    assert stream == "7"
    assert got.json == [msgs.sdk_json(m) for m in sent]
    assert [e.event_id for e in got.events] == ids
    assert [type(msgs.unwrap(e.message)) for e in got.events] == [
        type(msgs.unwrap(m)) for m in sent
    ]


async def test_event_ids_are_unique_visible_ascii(store: Any) -> None:
    view = store.for_session("s p/a{c}e")
    ids = [
        await view.store_event(stream, msgs.notification(i))
        for i in range(50)
        for stream in ("1", "é x")
    ]
    assert len(set(ids)) == len(ids)
    for event_id in ids:
        assert event_id and all(0x21 <= ord(c) <= 0x7E for c in event_id), event_id


async def test_priming_events_are_stored_but_never_replayed(store: Any) -> None:
    view = store.for_session("sess")
    first = await view.store_event("_GET_stream", None)
    await view.store_event("_GET_stream", msgs.notification(1))
    second = await view.store_event("_GET_stream", None)
    await view.store_event("_GET_stream", msgs.notification(2))

    _, got = await replay(view, first)
    assert [msgs.unwrap(e.message).params["progress"] for e in got.events] == [1, 2]
    _, got = await replay(view, second)
    assert [msgs.unwrap(e.message).params["progress"] for e in got.events] == [2]


async def test_replay_returns_the_stream_when_nothing_follows(store: Any) -> None:
    view = store.for_session("sess")
    last = await view.store_event("42", msgs.response(42, "done"))
    stream, got = await replay(view, last)
    assert stream == "42"
    assert got.events == []


async def test_equal_request_ids_in_two_sessions_stay_apart(store: Any) -> None:
    a, b = store.for_session("session-a"), store.for_session("session-b")
    a_start, b_start = await a.store_event("1", None), await b.store_event("1", None)
    for n in range(3):
        await a.store_event("1", msgs.notification(n, "for a"))
        await b.store_event("1", msgs.notification(n, "for b"))
    await a.store_event("1", msgs.response(1, "a's answer"))
    await b.store_event("1", msgs.response(1, "b's answer"))

    _, got_a = await replay(a, a_start)
    _, got_b = await replay(b, b_start)
    assert len(got_a.events) == len(got_b.events) == 4
    assert all("for b" not in j and "b's" not in j for j in got_a.json)
    assert all("for a" not in j and "a's" not in j for j in got_b.json)

    # A Last-Event-ID of session A sent on session B replays nothing, and vice versa.
    stream, got = await replay(b, a_start)
    assert stream is None and got.events == []
    stream, got = await replay(a, b_start)
    assert stream is None and got.events == []


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "garbage",
        "x" * 1025,
        "sess:1:" + "9" * 2000,
        "sess:1:1-0\r\nX-Injected: yes",
        "sess:1:99999999999999-0",  # well formed, never stored
        "sess:nope:0-1",
        "other:1:0-1",
        "\x00\xff",
        None,
        12345,
    ],
)
async def test_bad_last_event_ids_replay_nothing_and_raise_nothing(store: Any, bad: Any) -> None:
    view = store.for_session("sess")
    await view.store_event("1", None)
    await view.store_event("1", msgs.notification(1))
    stream, got = await replay(view, bad)
    assert stream is None
    assert got.events == []


async def test_expired_event_ids_replay_nothing(redis_server: RedisServer, prefix: str) -> None:
    async with RedisEventStore(redis_server.url, prefix=prefix, ttl_seconds=0.3) as store:
        view = store.for_session("sess")
        first = await view.store_event("1", None)
        await view.store_event("1", msgs.notification(1))
        stream, got = await replay(view, first)
        assert stream == "1" and len(got.events) == 1
        await asyncio.sleep(0.6)
        stream, got = await replay(view, first)
        assert stream is None and got.events == []


async def test_ttl_slides_with_each_append(redis_server: RedisServer, prefix: str) -> None:
    async with RedisEventStore(redis_server.url, prefix=prefix, ttl_seconds=0.6) as store:
        view = store.for_session("sess")
        first = await view.store_event("1", None)
        for n in range(4):
            await asyncio.sleep(0.3)
            await view.store_event("1", msgs.notification(n))
        stream, got = await replay(view, first)
        assert stream == "1" and len(got.events) == 4


async def test_replay_pages_through_long_streams(redis_server: RedisServer, prefix: str) -> None:
    async with RedisEventStore(redis_server.url, prefix=prefix, replay_page_size=7) as store:
        view = store.for_session("sess")
        first = await view.store_event("1", None)
        for n in range(50):
            await view.store_event("1", msgs.notification(n))
            if n % 10 == 0:
                await view.store_event("1", None)  # priming rows mid-page are skipped
        _, got = await replay(view, first)
        assert [msgs.unwrap(e.message).params["progress"] for e in got.events] == list(range(50))


async def test_concurrent_streams_keep_order_and_lose_nothing(store: Any) -> None:
    async def one_stream(n: int) -> None:
        view = store.for_session(f"session-{n % 8}")
        stream = f"req-{n}"
        first = await view.store_event(stream, None)
        for i in range(100):
            await view.store_event(stream, msgs.notification(i, stream))
        _, got = await replay(view, first)
        assert [msgs.unwrap(e.message).params["progress"] for e in got.events] == list(range(100))
        assert all(msgs.unwrap(e.message).params["message"] == stream for e in got.events)

    await asyncio.gather(*(one_stream(n) for n in range(64)))


async def test_memory_store_is_bounded() -> None:
    store = MemoryEventStore(max_events_per_stream=5, max_streams=3)
    view = store.for_session("s")
    first = await view.store_event("1", None)
    ids = [await view.store_event("1", msgs.notification(i)) for i in range(10)]
    assert (await replay(view, first))[0] is None, "trimmed away"
    _, got = await replay(view, ids[5])
    assert len(got.events) == 4
    for stream in ("2", "3", "4"):
        await view.store_event(stream, msgs.notification(0))
    assert store.stats()["streams"] == 3
    assert (await replay(view, ids[5]))[0] is None, "least recently written stream was evicted"


async def test_unattached_store_works_for_one_session_and_warns_once(store: Any) -> None:
    with pytest.warns(UnattachedStoreWarning, match="attach"):
        first = await store.store_event("1", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        await store.store_event("1", msgs.notification(1))
        stream, got = await replay(store, first)
    assert stream == "1" and len(got.events) == 1
    # An unattached store refuses IDs of attached sessions, and views refuse its IDs.
    view = store.for_session("sess")
    view_first = await view.store_event("1", None)
    await view.store_event("1", msgs.notification(2))
    assert (await replay(store, view_first))[0] is None
    assert (await replay(view, first))[0] is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"url": "http://127.0.0.1:6379"}, "invalid Redis URL"),
        ({"url": "not a url"}, "invalid Redis URL"),
        ({"url": None}, "url must be a string"),
        ({"prefix": ""}, "prefix"),
        ({"prefix": "a{b}"}, "braces"),
        ({"ttl_seconds": 0}, "ttl_seconds"),
        ({"ttl_seconds": -1}, "ttl_seconds"),
        ({"ttl_seconds": float("nan")}, "ttl_seconds"),
        ({"ttl_seconds": "60"}, "ttl_seconds"),
        ({"max_events_per_stream": 0}, "max_events_per_stream"),
        ({"max_events_per_stream": 1.5}, "max_events_per_stream"),
        ({"max_events_per_stream": True}, "max_events_per_stream"),
        ({"buffer_max_events": -1}, "buffer_max_events"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"replay_page_size": 0}, "replay_page_size"),
    ],
)
def test_bad_options_raise_value_error(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        RedisEventStore(**kwargs)
    assert isinstance(info.value, ConfigError)


def test_bad_memory_options_raise_value_error() -> None:
    with pytest.raises(ValueError, match="max_streams"):
        MemoryEventStore(max_streams=0)
    with pytest.raises(ValueError, match="max_events_per_stream"):
        MemoryEventStore(max_events_per_stream=-3)


async def test_unreachable_redis_raises_connection_error_naming_the_url() -> None:
    port = free_port()
    store = RedisEventStore(f"redis://user:secret@127.0.0.1:{port}/2", timeout_seconds=1)
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}/2") as info:
        await store.connect()
    assert isinstance(info.value, RedisUnavailableError)
    assert "secret" not in str(info.value)
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
        await store.for_session("s").replay_events_after("s:1:1-0", Collector())
    await store.close()


async def test_store_event_never_raises_while_redis_is_down() -> None:
    store = RedisEventStore(f"redis://127.0.0.1:{free_port()}/0", timeout_seconds=0.5)
    view = store.for_session("s")
    event_id = await view.store_event("1", msgs.notification(1))
    assert event_id.startswith("s:1:")
    assert store.stats()["buffered"] == 1
    await store.close()


async def test_a_failing_store_event_logs_and_returns_no_id(
    redis_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The SDK stops a session's message router if store_event raises: it must not.
    store = RedisEventStore(redis_server.url, prefix=prefix)
    await store.close()
    assert await store.for_session("s").store_event("1", msgs.notification(1)) is None
    assert "closed" in caplog.text and "could not store an event" in caplog.text


async def test_replay_skips_entries_it_did_not_write_and_serves_the_rest(
    redis_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    import redis as redis_py

    async with RedisEventStore(redis_server.url, prefix=prefix) as store:
        view = store.for_session("sess")
        first = await view.store_event("1", None)
        await view.store_event("1", msgs.notification(0))
        key = f"{prefix}:e:{{sess}}:1"
        raw = redis_py.Redis.from_url(redis_server.url)
        raw.xadd(key, {"n": b"{not json"})
        raw.xadd(key, {"n": b'{"jsonrpc": "2.0"}'})  # JSON, but no method
        raw.xadd(key, {"zz": b"{}"})  # unknown kind
        raw.xadd(key, {"t": b"n", "d": b"{}"})  # not our layout
        # Another writer whose clock runs far ahead: Redis places our next events after it.
        raw.xadd(key, {"n": b"{}"}, id="9999999999999-0")
        ids = [await view.store_event("1", msgs.notification(n)) for n in (1, 2)]
        assert ids == ["sess:1:9999999999999-1", "sess:1:9999999999999-2"]
        got = Collector()
        assert await view.replay_events_after(first, got) == "1"
        assert [msgs.unwrap(e.message).params["progress"] for e in got.events] == [0, 1, 2]
        assert [e.event_id for e in got.events][1:] == ids
        assert "skipping an unreadable stored event" in caplog.text


async def test_log_lines_show_sessions_truncated(
    redis_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused write is logged by the Rust core under "mcp_db" at ERROR, naming the key
    with its session cut to 8 characters: logs must not carry whole session IDs."""
    import redis as redis_py

    from mcp_db._core import key_of

    session = "0123456789abcdef" * 2
    with redis_py.Redis.from_url(redis_server.url) as redis:
        redis.set(key_of(prefix, "events", session, "1"), "not a stream")
    async with RedisEventStore(redis_server.url, prefix=prefix) as store:
        await store.for_session(session).store_event("1", msgs.notification(1))
        assert store.stats()["dropped"] == 1
    refused = [r for r in caplog.records if "Redis refused event" in r.getMessage()]
    assert [(r.name, r.levelname) for r in refused] == [("mcp_db", "ERROR")], refused
    assert "{01234567…}" in refused[0].getMessage()
    assert session not in caplog.text


async def test_with_warnings_as_errors_an_unattached_store_still_stores(
    store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The SDK's own tests run with ``-W error``: the warning must not raise into the SDK."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = await store.store_event("1", None)
        await store.store_event("1", msgs.notification(1))
        stream, got = await replay(store, first)
    assert isinstance(first, str) and stream == "1" and len(got.events) == 1
    assert "without attach()" in caplog.text, "the warning is logged instead"


def test_without_an_asyncio_loop_the_store_refuses_clearly_and_never_hangs(
    redis_server: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Under trio, the core's results have no asyncio loop to go to: a store write is
    logged as failed (never raised into the SDK), a replay raises a ``ConfigError`` that
    says so, and neither waits for a result that would never come."""
    trio = pytest.importorskip("trio")
    view = RedisEventStore(redis_server.url, prefix=prefix).for_session("s")

    async def main() -> None:
        with trio.fail_after(5):
            assert await view.store_event("1", msgs.notification(1)) is None
            with pytest.raises(ConfigError, match="asyncio event loop"):
                await view.replay_events_after(make_event_id("s", "1", "1-0"), _ignore)
            assert "asyncio event loop" in caplog.text

    trio.run(main)


async def _ignore(_: Any) -> None:
    pass
