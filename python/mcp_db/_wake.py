"""The event loop's end of ``src/bridge.rs``: one socket per loop, watched with
``add_reader``, through which the Rust core's I/O thread says results are in. Called by
the core when it starts a piece of work; not public."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from mcp_db._core import Wakeup
from mcp_db.errors import ConfigError

_wakeups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Wakeup] = weakref.WeakKeyDictionary()


def forget() -> weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Wakeup]:
    """Drops every loop's wake-up and returns them (``_fork``, in a forked child: their
    sockets are shared with the parent, whose I/O thread writes to them)."""
    global _wakeups
    forgotten, _wakeups = _wakeups, weakref.WeakKeyDictionary()
    return forgotten


def start() -> tuple[Wakeup, asyncio.Future[Any]]:
    """The running loop's :class:`Wakeup` (made and watched on first use) and a new future
    of that loop. ``ConfigError`` outside an asyncio loop: the hand-off watches one, and
    without it a result would never arrive (a wait would hang)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise ConfigError(
            "mcp-db runs on asyncio, and no asyncio event loop is running here (trio?): "
            "serve the app on asyncio (uvicorn, or hypercorn's asyncio worker)"
        ) from None
    wakeup = _wakeups.get(loop)
    if wakeup is None:
        wakeup = _wakeups[loop] = Wakeup()
        loop.add_reader(wakeup.fileno(), wakeup.drain)
    return wakeup, loop.create_future()
