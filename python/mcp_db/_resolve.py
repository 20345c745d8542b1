"""Called by the Rust writer, through ``loop.call_soon_threadsafe``, once per batch."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence


def resolve_batch(futures: Sequence[asyncio.Future[str]], results: Sequence[str]) -> None:
    for future, result in zip(futures, results, strict=True):
        # A cancelled caller has gone away; its event is stored all the same.
        if not future.done():
            future.set_result(result)
