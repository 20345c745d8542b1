"""``mcp-db events tail``: a session's stored events, then new ones as they come.

Each event is one entry of a Redis stream of the session (``crates/core/src/events/``): its one
field's name is the message kind and its value the message JSON, empty for a priming event.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from mcp_db import _core
from mcp_db._admin import BATCH, Deployment
from mcp_db._report import text

#: The message kind of an event, from its entry's field name.
KINDS = {"q": "request", "n": "notification", "r": "response", "e": "error", "p": "priming"}
#: How often ``follow`` looks for streams the session opened since.
RESCAN_SECONDS = 2.0


def _order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def event_of(session: str, stream: str, entry_id: Any, fields: Any) -> dict[str, Any]:
    """An event as the command prints it: entry ID, stream, kind and the message JSON, and
    its event ID (the ``Last-Event-ID`` that resumes the stream right after it)."""
    items = list(fields.items()) if isinstance(fields, dict) else []
    tag, data = (text(items[0][0]), items[0][1]) if items else ("", b"")
    message: Any = None
    if data:
        try:
            message = json.loads(data)
        except ValueError:
            message = text(data)
    entry = text(entry_id)
    return {
        "id": entry,
        "event_id": _core.event_id(session, stream, entry),
        "stream": stream,
        "kind": KINDS.get(tag, tag),
        "message": message,
    }


def stored(
    dep: Deployment, session: str, keys: dict[str, str]
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every stored event of ``session``'s streams ``keys`` (stream name -> key), oldest first, and
    the last entry ID read from each key (``0-0`` for none), where ``follow`` goes on."""
    found: list[dict[str, Any]] = []
    last: dict[str, str] = {}
    for stream, key in keys.items():
        after, last[key] = "-", "0-0"
        while True:
            page = dep.client.xrange(key, min=after, count=BATCH)
            for entry_id, fields in page:
                found.append(event_of(session, stream, entry_id, fields))
                last[key] = found[-1]["id"]
            if len(page) < BATCH:
                break
            after = "(" + last[key]
    found.sort(key=lambda event: _order(event["id"]))
    return found, last


def follow(
    dep: Deployment, session: str, keys: dict[str, str], last: dict[str, str], rescan: bool
) -> Iterator[dict[str, Any]]:
    """New events of ``keys`` after ``last`` as they come (XREAD BLOCK), forever. With
    ``rescan``, streams the session opens meanwhile are found by a SCAN every few seconds
    and read from their start."""
    last = dict(last)
    streams = {key: stream for stream, key in keys.items()}
    rescanned = time.monotonic()
    while True:
        if rescan and time.monotonic() - rescanned > RESCAN_SECONDS:
            for stream, key in dep.streams_of(session):
                if key not in last:
                    last[key], streams[key] = "0-0", stream
            rescanned = time.monotonic()
        if not last:
            time.sleep(0.5)
            continue
        reply = dep.client.xread(last, count=BATCH, block=1000)
        for raw_key, entries in _xread_items(reply):
            key = text(raw_key)
            for entry_id, fields in entries:
                event = event_of(session, streams[key], entry_id, fields)
                last[key] = event["id"]
                yield event


def _xread_items(reply: Any) -> list[tuple[Any, list[Any]]]:
    """``(key, entries)`` of an XREAD reply: a list in RESP2, a dict in RESP3."""
    if isinstance(reply, dict):
        return [
            (key, value[0] if value and isinstance(value[0], list) else value)
            for key, value in reply.items()
        ]
    return [(key, entries) for key, entries in reply or ()]
