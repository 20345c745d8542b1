"""The 2026-07-28 ``subscriptions/listen`` streams a server has open (mcp 2.x).

A listen stream is one long response. When a node shuts down, the server would wait for
it to end, or cut it; the SDK's ``ListenHandler.close()`` ends each one gracefully
instead: it sends its final result frame, which tells the client the stream ended on
purpose, so the client listens again (through the load balancer, on another node) and
refetches. mcp 1.x has no listen streams.
"""

from __future__ import annotations

from typing import Any


def close_listen_streams(server: Any) -> bool:
    """Ends every open listen stream of the lowlevel ``server`` gracefully; ``False`` if it
    serves none (mcp 1.x, ``subscriptions=False``, or a handler without ``close``)."""
    entries = getattr(server, "_request_handlers", None)
    entry = entries.get("subscriptions/listen") if isinstance(entries, dict) else None
    close = getattr(getattr(entry, "handler", None), "close", None)
    if not callable(close):
        return False
    close()
    return True
