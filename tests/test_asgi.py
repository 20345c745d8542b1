"""The ASGI plumbing (``_asgi.py``): header reading, the body limit, and the responses
mcp-db answers with itself. The coroutines here never wait, so they are driven by hand:
no event loop, no server."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from mcp_db._asgi import (
    CLOSED,
    EMPTY_STREAM,
    FULL,
    MOVED,
    NOT_FOUND,
    OWNER_BUSY,
    OWNER_LOST,
    PATH,
    TOO_LARGE,
    TOO_MANY,
    UNAVAILABLE,
    Message,
    Replay,
    header,
    mcp_headers,
    read_body,
    response_header,
    store_unavailable,
    too_large,
)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Runs a coroutine that never suspends."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the coroutine waited")


def receiver(*messages: Message) -> Any:
    queue = list(messages)

    async def receive() -> Message:
        return queue.pop(0)

    return receive


def chunk(body: bytes, more: bool) -> Message:
    return {"type": "http.request", "body": body, "more_body": more}


def test_a_body_within_the_limit_is_read_whole() -> None:
    receive = receiver(chunk(b"ab", True), chunk(b"cd", False))
    assert run(read_body(receive, 4)) == (b"abcd", True)


def test_reading_stops_past_the_limit_and_leaves_the_rest() -> None:
    receive = receiver(chunk(b"abc", True), chunk(b"de", True), chunk(b"f", False))
    body, complete = run(read_body(receive, 4))
    assert (body, complete) == (b"abcde", False)
    assert too_large(body, complete)
    assert run(receive()) == chunk(b"f", False)


def test_a_client_that_leaves_ends_the_body_incomplete() -> None:
    body, complete = run(read_body(receiver({"type": "http.disconnect"}), 4))
    assert (body, complete) == (b"", False)
    assert not too_large(body, complete)
    assert not too_large(b"abc", True)


def test_replay_hands_back_the_body_read_then_the_rest() -> None:
    replay = Replay(b"abc", receiver(chunk(b"d", False)), more=True)
    assert run(replay()) == chunk(b"abc", True)
    assert run(replay()) == chunk(b"d", False)


def test_headers_are_read_by_exact_name_and_response_headers_by_any_case() -> None:
    scope = {"headers": [(b"mcp-session-id", b"s1"), (b"x", b"\xe9")]}
    assert header(scope, b"mcp-session-id") == "s1"
    assert header(scope, b"x") == "\xe9"
    assert header(scope, b"last-event-id") is None
    assert header({}, b"x") is None
    message = {"headers": [(b"Mcp-Session-Id", b"s2")]}
    assert response_header(message, b"mcp-session-id") == "s2"


def sent(response: Any, method: str = "POST") -> tuple[dict[str, Any], list[Message]]:
    scope: dict[str, Any] = {"method": method, "headers": []}
    messages: list[Message] = []

    async def send(message: Message) -> None:
        messages.append(message)

    run(response.send(scope, send))
    return scope, messages


def test_the_error_responses_are_the_sdk_shaped_json_rpc_errors() -> None:
    def error(code: int, message: str) -> bytes:
        return b'{"jsonrpc":"2.0","id":null,"error":{"code":%d,"message":"%s"}}' % (
            code,
            message.encode(),
        )

    assert (NOT_FOUND.status, NOT_FOUND.body) == (404, error(-32600, "Session not found"))
    assert (TOO_LARGE.status, TOO_LARGE.body) == (413, error(-32600, "Request body too large"))
    for response, message in (
        (UNAVAILABLE, "Session store unavailable"),
        (MOVED, "Session moved; retry"),
        (OWNER_BUSY, "Session owner not answering"),
        (OWNER_LOST, "Session owner went away"),
        (TOO_MANY, "Too many open sessions"),
    ):
        assert (response.status, response.body) == (503, error(-32603, message))
    assert FULL.body == error(
        -32603, "Session store full: Redis is out of memory (maxmemory); try again later"
    )


def test_each_response_carries_its_headers_and_path() -> None:
    json_type = (b"content-type", b"application/json")
    retry = (b"retry-after", b"1")
    for response, headers, path in (
        (NOT_FOUND, [json_type], "not_found"),
        (TOO_LARGE, [json_type], None),
        (UNAVAILABLE, [json_type, retry], "unavailable"),
        (FULL, [json_type, retry], "unavailable"),
        (MOVED, [json_type, retry, (b"mcp-db-moved", b"1")], "unavailable"),
        (OWNER_BUSY, [json_type, retry], "unavailable"),
        (OWNER_LOST, [json_type, retry], "unavailable"),
        (TOO_MANY, [json_type], "unavailable"),
        (CLOSED, [], None),
    ):
        scope, messages = sent(response)
        assert messages == [
            {"type": "http.response.start", "status": response.status, "headers": headers},
            {"type": "http.response.body", "body": response.body},
        ]
        assert scope.get(PATH) == path


def test_every_send_gets_fresh_messages() -> None:
    _, first = sent(NOT_FOUND)
    first[0]["headers"].append((b"x-added-by-middleware", b"1"))
    _, second = sent(NOT_FOUND)
    assert second[0]["headers"] == [(b"content-type", b"application/json")]


def test_without_redis_a_stream_resumption_gets_an_empty_stream_and_the_rest_503() -> None:
    resume = {"method": "GET", "headers": [(b"last-event-id", b"e1")]}
    assert store_unavailable(resume) is EMPTY_STREAM
    assert store_unavailable({"method": "GET", "headers": []}) is UNAVAILABLE
    assert store_unavailable({**resume, "method": "POST"}) is UNAVAILABLE
    scope, messages = sent(EMPTY_STREAM, "GET")
    assert messages[0]["status"] == 200
    assert messages[0]["headers"] == [
        (b"content-type", b"text/event-stream"),
        (b"cache-control", b"no-cache, no-transform"),
    ]
    assert messages[1] == {"type": "http.response.body", "body": b""}
    assert scope[PATH] == "unavailable"


def test_both_mcp_headers_are_read_in_one_pass_first_one_wins() -> None:
    scope = {
        "headers": [
            (b"host", b"x"),
            (b"mcp-session-id", b"s1"),
            (b"mcp-protocol-version", b"2025-06-18"),
            (b"mcp-session-id", b"s2"),
            (b"mcp-protocol-version", b"2026-07-28"),
        ]
    }
    assert mcp_headers(scope) == ("2025-06-18", "s1")
    assert mcp_headers({"headers": [(b"Mcp-Session-Id", b"s1")]}) == (None, None)
    assert mcp_headers({}) == (None, None)
