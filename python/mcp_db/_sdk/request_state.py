"""The server's request-state key ring (mcp 2.x), through the SDK's private parts.

``MCPServer`` puts a ``RequestStateBoundary`` in the lowlevel server's ``middleware`` list.
The boundary keeps the ``RequestStateSecurity`` in ``_security`` and the audience it
stamps in ``_audience``. The built-in ``AESGCMRequestStateCodec`` keeps its ring in
``_ring`` (key id -> cipher) and the id it seals with in ``_mint_kid``. The key bytes
themselves are inside the ciphers, out of reach; mcp-db reads only the ids.

Whether a ring is ephemeral cannot be read from it: ``RequestStateSecurity.ephemeral()``
is ``keys=[os.urandom(32)]``, one random key like any other, and ``MCPServer`` does not
record whether ``request_state_security=`` was given. So :func:`track`, run when mcp-db's
SDK layer is imported, wraps ``ephemeral`` and ``__init__`` to remember which policies
``ephemeral()`` made and which were made at all since. A policy made before mcp-db was
imported is neither: ``ephemeral`` is then ``None`` (unknown), and only the comparison
across nodes can tell.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

from mcp.server.request_state import (
    AESGCMRequestStateCodec,
    RequestStateBoundary,
    RequestStateSecurity,
)

from mcp_db._request_keys import describe, describe_custom

__all__ = ["request_keys", "track"]

#: Policies ``ephemeral()`` made, and every policy made, since :func:`track` ran.
_MADE_EPHEMERAL: weakref.WeakSet[RequestStateSecurity] = weakref.WeakSet()
_MADE: weakref.WeakSet[RequestStateSecurity] = weakref.WeakSet()
#: Marks the SDK's methods as wrapped, so that tracking twice wraps nothing twice.
_WRAPPED = "__mcp_db_tracked__"


def track() -> None:
    """Remembers, from now on, which request-state policies are ephemeral. Idempotent.
    The wrappers only record; what the SDK's methods do and return is unchanged."""
    cls = RequestStateSecurity
    if getattr(cls.__init__, _WRAPPED, False):
        return
    init = cls.__init__
    ephemeral = cls.ephemeral.__func__  # type: ignore[attr-defined]

    @functools.wraps(init)
    def tracked_init(self: RequestStateSecurity, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        _MADE.add(self)

    @functools.wraps(ephemeral)
    def tracked_ephemeral(klass: type[RequestStateSecurity], **kwargs: Any) -> Any:
        made = ephemeral(klass, **kwargs)
        _MADE_EPHEMERAL.add(made)
        return made

    setattr(tracked_init, _WRAPPED, True)
    cls.__init__ = tracked_init  # type: ignore[method-assign]
    cls.ephemeral = classmethod(tracked_ephemeral)  # type: ignore[method-assign,assignment,arg-type]


def _is_ephemeral(security: RequestStateSecurity) -> bool | None:
    if security in _MADE_EPHEMERAL:
        return True
    if security in _MADE:
        return False
    return None  # made before mcp-db was imported


def request_keys(manager: Any) -> dict[str, Any] | None:
    """What the heartbeat says of the key ring of the server behind ``manager`` (see
    ``mcp_db._request_keys``), or ``None`` if that server seals no request state (a
    lowlevel ``Server`` without the boundary)."""
    server = getattr(manager, "app", None)
    boundary = next(
        (m for m in getattr(server, "middleware", ()) if isinstance(m, RequestStateBoundary)),
        None,
    )
    if boundary is None:
        return None
    security: RequestStateSecurity = boundary._security
    ephemeral = _is_ephemeral(security)
    codec = security.codec
    if not isinstance(codec, AESGCMRequestStateCodec):
        return describe_custom(type(codec).__qualname__, ephemeral)
    return describe(codec._ring, codec._mint_kid, boundary._audience, ephemeral)
