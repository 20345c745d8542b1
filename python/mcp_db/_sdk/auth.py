"""Who made a request, as the SDK binds sessions to it.

mcp 1.2x and 2.x remember the authenticated principal that created a session and answer
404 to any other; mcp 1.12 has no session owners, so every principal is ``""`` there.
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Any

try:  # mcp 1.2x and 2.x: sessions belong to the principal that created them
    from mcp.server.auth.middleware.bearer_auth import (
        AuthenticatedUser as _AuthenticatedUser,
    )
    from mcp.server.auth.middleware.bearer_auth import (
        authorization_context as _authorization_context,
    )
except ImportError:  # mcp 1.12 has no session owners
    _AuthenticatedUser = None  # type: ignore[assignment,misc]

__all__ = ["principal"]


def principal(scope: MutableMapping[str, Any]) -> str:
    """The authenticated principal as the SDK identifies it, as JSON ("" if none)."""
    user = scope.get("user")
    if _AuthenticatedUser is None or not isinstance(user, _AuthenticatedUser):
        return ""
    return json.dumps(_authorization_context(user), sort_keys=True)
