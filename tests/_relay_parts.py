"""The relay's typed results as plain tuples, so a relay test compares a whole result in
one assertion: ``("head", status, headers)``, ``("chunk", data)``, ``("end", ok)``,
``("accepted", response)``, ``("owner-lost", reason)``..."""

from __future__ import annotations

import asyncio
from typing import Any

from mcp_db._core import (
    Chunk,
    Cut,
    End,
    Forward,
    Forwarded,
    Head,
    RelayedRequest,
    RelayOutcome,
    Whole,
)

_OUTCOMES = {
    RelayOutcome.ACCEPTED: "accepted",
    RelayOutcome.UNREACHABLE: "unreachable",
    RelayOutcome.TIMEOUT: "timeout",
    RelayOutcome.OWNER_LOST: "owner-lost",
    RelayOutcome.REFUSED: "refused",
}


def part(p: Whole | Head | Chunk | End | Cut) -> tuple[Any, ...]:
    if isinstance(p, Whole):
        return ("whole", p.status, p.headers, p.body)
    if isinstance(p, Head):
        return ("head", p.status, p.headers)
    if isinstance(p, Chunk):
        return ("chunk", p.data)
    if isinstance(p, End):
        return ("end", p.ok)
    return ("cut", p.reason)


async def next_part(forward: Forward, timeout: float = 5) -> tuple[Any, ...]:
    return part(await asyncio.wait_for(forward.next(), timeout))


async def take(owner: Any, timeout: float = 5) -> RelayedRequest:
    """The next request relayed to ``owner``, claimed by it (``next_requests``)."""
    (taken,) = await asyncio.wait_for(owner.next_requests(1), timeout)
    return taken


def forwarded(f: Forwarded) -> tuple[Any, ...]:
    """``(outcome, response or reason or None)``."""
    return (_OUTCOMES[f.outcome], f.response if f.response is not None else f.reason)


def request(r: RelayedRequest) -> tuple[bytes, str, str, str, bytes]:
    return (r.id, r.sender, r.session, r.head, r.body)
