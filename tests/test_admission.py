"""Admission of ``initialize`` (``middleware/admission.py``): which POST without a session
is refused, passed to the SDK, or opens a session to record. No Redis, no server, no event
loop; each test fails if its rule is inverted."""

from __future__ import annotations

import json

from mcp_db.middleware.admission import (
    PASS_THROUGH,
    TOO_LARGE_BODY,
    Initialize,
    InvalidParams,
    admit,
    initialize_request,
    opened_session,
)

PARAMS = {
    "protocolVersion": "2025-06-18",
    "capabilities": {},
    "clientInfo": {"name": "c", "version": "1"},
}


def initialize(params: object = PARAMS, request_id: object = 1) -> bytes:
    message = {"jsonrpc": "2.0", "id": request_id, "method": "initialize", "params": params}
    return json.dumps(message).encode()


def test_an_initialize_with_valid_params_opens_a_session() -> None:
    assert admit(initialize(), True) == Initialize(PARAMS)


def test_a_body_past_the_limit_is_refused_before_any_session_exists() -> None:
    assert admit(initialize(), False) is TOO_LARGE_BODY


def test_a_client_that_left_before_sending_a_body_is_passed_to_the_sdk() -> None:
    assert admit(b"", False) is PASS_THROUGH


def test_anything_but_an_initialize_request_is_passed_to_the_sdk() -> None:
    for body in (
        b"not json",
        b"[" * 5000 + b"]" * 5000,  # deeper than Python's stack
        b"[]",
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode(),
        json.dumps({"jsonrpc": "2.0", "method": "initialize", "params": PARAMS}).encode(),
    ):
        assert admit(body, True) is PASS_THROUGH, body[:40]
        assert initialize_request(body) is None


def test_an_initialize_with_params_the_sdk_refuses_gets_400_and_no_session() -> None:
    step = admit(initialize({"protocolVersion": "2025-06-18"}, request_id="r1"), True)
    assert isinstance(step, InvalidParams)
    assert step.response.status == 400
    answer = json.loads(step.response.body)
    assert answer["id"] == "r1" and answer["error"]["code"] == -32602
    assert "no session was created" in answer["error"]["message"]


def test_the_400_echoes_only_a_valid_request_id() -> None:
    for request_id, echoed in ((7, 7), ("x", "x"), (True, None), ([1], None), (None, None)):
        step = admit(initialize({}, request_id=request_id), True)
        assert isinstance(step, InvalidParams)
        assert json.loads(step.response.body)["id"] == echoed


def test_the_session_to_record_is_the_one_a_200_answer_names() -> None:
    start = {"type": "http.response.start", "status": 200, "headers": [(b"Mcp-Session-Id", b"s1")]}
    assert opened_session(start) == "s1"


def test_no_session_is_recorded_for_an_answer_that_is_not_200() -> None:
    start = {"type": "http.response.start", "status": 400, "headers": [(b"mcp-session-id", b"s1")]}
    assert opened_session(start) is None


def test_no_session_is_recorded_for_an_answer_without_a_session_id() -> None:
    assert opened_session({"type": "http.response.start", "status": 200, "headers": []}) is None
    empty = {"type": "http.response.start", "status": 200, "headers": [(b"mcp-session-id", b"")]}
    assert opened_session(empty) is None
    assert opened_session({"type": "http.response.body", "body": b"{}"}) is None
