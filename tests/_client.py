"""The installed SDK's own streamable HTTP client, the same way across SDK lines."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
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
    fresh_connections: bool = False,
    **options: Any,
) -> AsyncIterator[ClientSession]:
    """An initialized ``ClientSession`` (handshake era), offering ``protocol`` (default:
    the client's newest). ``options`` go to ``ClientSession`` (``sampling_callback``,
    ``elicitation_callback``, ``message_handler``, ...). With ``fresh_connections`` every
    HTTP request opens its own TCP connection, so the workers of one ``uvicorn --workers``
    port share the session's requests among them, as round robin over hosts would."""
    wanted = protocol or PROTOCOL
    async with AsyncExitStack() as http:
        transport = await _keep_alive_off(http) if fresh_connections else {}
        with _offering(wanted):
            async with _open(url, **transport) as streams:
                read, write = streams[0], streams[1]
                async with ClientSession(
                    read, write, logging_callback=logging_callback, **options
                ) as session:
                    init = await session.initialize()
                    negotiated = getattr(init, "protocol_version", None) or init.protocolVersion
                    assert negotiated == wanted, f"negotiated {negotiated}, expected {wanted}"
                    yield session


async def _keep_alive_off(stack: AsyncExitStack) -> dict[str, Any]:
    """Transport options for an HTTP client that keeps no connection alive."""
    from mcp.shared import _httpx_utils

    http: Any = getattr(_httpx_utils, "httpx2", None) or _httpx_utils.httpx
    limits = http.Limits(max_keepalive_connections=0)
    timeout = http.Timeout(30.0, read=300.0)
    if "httpx_client_factory" in inspect.signature(_open).parameters:  # 1.12

        def factory(headers: Any = None, timeout: Any = timeout, auth: Any = None) -> Any:
            return http.AsyncClient(
                headers=headers, timeout=timeout, auth=auth, limits=limits, follow_redirects=True
            )

        return {"httpx_client_factory": factory}
    client = await stack.enter_async_context(http.AsyncClient(timeout=timeout, limits=limits))
    return {"http_client": client}


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


def owners_in_turn(answers: list[str]) -> list[str]:
    """The processes that ran a session's calls, in turn (``whoami`` answers in order,
    repeats folded): one per move of the session."""
    return [answer for i, answer in enumerate(answers) if i == 0 or answers[i - 1] != answer]


#: Whether this SDK line's client resumes a cut stream by itself (1.2x and 2.x).
AUTO_RESUME = SDK_MAJOR >= 2 or not _open.__name__.startswith("streamablehttp")
#: The protocol the client negotiates: 2025-11-25, except on 1.12, which predates it.
PROTOCOL = "2025-11-25" if AUTO_RESUME else "2025-06-18"


def kind(fields: dict[bytes, bytes]) -> bytes:
    """The message kind of a raw stream entry (its one field's name)."""
    (name,) = fields
    return name


@asynccontextmanager
async def listening(url: str, **filters: Any) -> AsyncIterator[list[Any]]:
    """A 2026-07-28 ``subscriptions/listen`` stream (mcp 2.x), opened with the SDK's own
    ``Client(mode="auto")`` and ``filters`` (``tools_list_changed=True``,
    ``resource_subscriptions=[...]``, ...): yields the list its events are collected into,
    until the block ends."""
    import anyio
    from mcp.client import Client

    heard: list[Any] = []
    async with Client(url, mode="auto") as client, client.listen(**filters) as stream:

        async def collect() -> None:
            async for event in stream:
                heard.append(event)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(collect)
            yield heard
            tasks.cancel_scope.cancel()


async def sse_events(response: Any) -> AsyncIterator[dict[str, str]]:
    """The SSE events of an httpx streaming ``response`` that carry data, each as field ->
    value, as they arrive."""
    event: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if event.get("data"):
                yield event
            event = {}
        elif ":" in line:
            field, _, value = line.partition(":")
            event[field] = value.removeprefix(" ")
