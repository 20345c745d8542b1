"""The four subscription events, for mcp 1.x, whose SDK has none: the same shapes as mcp
2.x's ``mcp.shared.subscriptions`` (which :mod:`mcp_db.subscriptions` uses when it exists).
On 1.x they reach handshake-era sessions only (``SessionMiddleware(..., bus=...)``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ToolsListChanged:
    """The server's tool list changed."""


@dataclass(frozen=True)
class PromptsListChanged:
    """The server's prompt list changed."""


@dataclass(frozen=True)
class ResourcesListChanged:
    """The server's resource list changed."""


@dataclass(frozen=True)
class ResourceUpdated:
    """The resource at ``uri`` changed."""

    uri: str
