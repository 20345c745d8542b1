"""Whatever a client sends as ``Last-Event-ID``, replay answers the stream or ``None`` and
never raises: property tests over both stores (Redis: a real redis-server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_db import MemoryEventStore, RedisEventStore, _core
from tests import _messages as msgs

U64_MAX = 2**64 - 1

# Positions at the edges of Redis' ID space, and anywhere between.
u64 = st.one_of(st.sampled_from([0, 1, U64_MAX - 1, U64_MAX]), st.integers(0, U64_MAX))
positions = st.builds(lambda ms, seq: f"{ms}-{seq}", u64, u64)
# What a client may put in the header: its own session's IDs with any position or stream,
# other sessions', and text of any shape.
streams = st.one_of(st.sampled_from(["1", "_GET_stream", "2"]), st.text(min_size=1, max_size=8))


def own_ids(session: str) -> st.SearchStrategy[str]:
    return st.builds(
        lambda stream, position: f"{session}:{_escape(stream)}:{position}", streams, positions
    )


def _escape(text: str) -> str:
    unreserved = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
    return "".join(chr(b) if b in unreserved else f"%{b:02X}" for b in text.encode())


@pytest.fixture(params=["memory", "redis"])
async def seeded(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[tuple[Any, Any]]:
    """A store with one session ``s`` whose stream ``1`` holds three events."""
    if request.param == "memory":
        store: Any = MemoryEventStore()
    else:
        store = RedisEventStore(request.getfixturevalue("redis_server").url, prefix=prefix)
    async with store:
        view = store.for_session("s")
        for i in range(3):
            await view.store_event("1", msgs.notification(i))
        yield store, view


async def _nothing(event: Any) -> None:
    pass


async def test_the_largest_position_of_ones_own_stream_replays_nothing_without_raising(
    seeded: tuple[Any, Any],
) -> None:
    """Defect 6 of issue 11: Redis refuses an exclusive range start past its largest ID,
    so this raised, the SDK logged an ERROR and ``replay_errors`` moved."""
    store, view = seeded
    largest = f"s:1:{U64_MAX}-{U64_MAX}"
    assert await view.replay_events_after(largest, _nothing) is None
    assert store.stats().get("replay_errors", 0) == 0


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(last_event_id=st.one_of(own_ids("s"), own_ids("other"), st.text(max_size=64)))
async def test_replay_of_any_last_event_id_answers_and_never_raises(
    seeded: tuple[Any, Any], last_event_id: str
) -> None:
    store, view = seeded
    seen: list[Any] = []

    async def collect(event: Any) -> None:
        seen.append(event)

    result = await view.replay_events_after(last_event_id, collect)
    parsed = _core.parse_event_id(last_event_id)
    if parsed is None or parsed[0] != "s":
        assert result is None and not seen, "garbled or foreign: nothing"
    else:
        assert result in (None, parsed[1])
        assert all(e.event_id.startswith("s:") for e in seen), "only its own session's events"
    assert store.stats().get("replay_errors", 0) == 0
