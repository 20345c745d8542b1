"""The installed SDK's own streamable HTTP client, the same way across SDK lines."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from mcp import ClientSession

from mcp_db._sdk import SDK_MAJOR

try:  # 1.2x and 2.x
    from mcp.client.streamable_http import streamable_http_client as _open
except ImportError:  # 1.12
    from mcp.client.streamable_http import streamablehttp_client as _open


@asynccontextmanager
async def client_session(
    url: str,
    *,
    logging_callback: Callable[..., Any] | None = None,
    protocol: str | None = None,
) -> AsyncIterator[ClientSession]:
    """An initialized ``ClientSession`` (handshake era), offering ``protocol`` (default:
    the client's newest)."""
    wanted = protocol or PROTOCOL
    with _offering(wanted):
        async with _open(url) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write, logging_callback=logging_callback) as session:
                init = await session.initialize()
                negotiated = getattr(init, "protocol_version", None) or init.protocolVersion
                assert negotiated == wanted, f"negotiated {negotiated}, expected {wanted}"
                yield session


@contextmanager
def _offering(version: str) -> Iterator[None]:
    """Makes the SDK's client offer ``version`` in ``initialize`` (it reads the constant
    at call time: ``mcp.types`` on 1.x, ``mcp.client.session`` on 2.x)."""
    import mcp.client.session as client_module
    import mcp.types as types_module

    module: Any = client_module if SDK_MAJOR >= 2 else types_module
    name = "LATEST_HANDSHAKE_VERSION" if SDK_MAJOR >= 2 else "LATEST_PROTOCOL_VERSION"
    saved = getattr(module, name)
    setattr(module, name, version)
    try:
        yield
    finally:
        setattr(module, name, saved)


def result_text(result: Any) -> str:
    return result.content[0].text


#: Whether this SDK line's client resumes a cut stream by itself (1.2x and 2.x).
AUTO_RESUME = SDK_MAJOR >= 2 or not _open.__name__.startswith("streamablehttp")
#: The protocol the client negotiates: 2025-11-25, except on 1.12, which predates it.
PROTOCOL = "2025-11-25" if AUTO_RESUME else "2025-06-18"


def kind(fields: dict[bytes, bytes]) -> bytes:
    """The message kind of a raw stream entry (its one field's name)."""
    (name,) = fields
    return name
