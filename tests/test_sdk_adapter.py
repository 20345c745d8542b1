"""The SDK adapter rebuilds stored messages exactly as validation would."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, field_validator

from mcp_db._sdk import decode, decode_run, encode
from mcp_db._sdk._codec import RunDecoder, constructible
from tests import _messages as msgs

ALL = [*msgs.mixed(3), msgs.request(9, "tools/call"), msgs.response("x", {"a": 1.5e300})]


@pytest.mark.parametrize("message", ALL, ids=lambda m: type(msgs.unwrap(m)).__name__)
def test_a_run_decodes_to_what_validation_gives(message: Any) -> None:
    tag, data = encode(message)
    run = b"[" + b",".join([data, data]) + b"]"
    fast = decode_run(tag, run)
    slow = decode(tag, data)
    assert len(fast) == 2
    for m in fast:
        assert type(m) is type(slow)
        assert type(msgs.unwrap(m)) is type(msgs.unwrap(slow))
        assert m == slow
        assert msgs.sdk_json(m) == msgs.sdk_json(message)
        assert msgs.unwrap(m).model_fields_set == msgs.unwrap(slow).model_fields_set


def test_unexpected_fields_fall_back_to_validation() -> None:
    tag, data = encode(msgs.notification(1))
    odd = data[:-1] + b',"surprise":true}'
    (message,) = decode_run(tag, b"[" + odd + b"]")
    assert msgs.unwrap(message).method == "notifications/progress"


def test_models_with_nested_models_or_validators_are_validated() -> None:
    class Inner(BaseModel):
        x: int

    class Nested(BaseModel):
        inner: Inner

    class Checked(BaseModel):
        n: int

        @field_validator("n")
        @classmethod
        def positive(cls, v: int) -> int:
            return abs(v)

    class Plain(BaseModel):
        a: str
        b: dict[str, Any] | None = None

    assert not constructible(Nested)
    assert not constructible(Checked)
    assert constructible(Plain)
    (checked,) = RunDecoder(Checked)(b'[{"n": -3}]')
    assert checked.n == 3, "validators ran"
    (nested,) = RunDecoder(Nested)(b'[{"inner": {"x": 1}}]')
    assert isinstance(nested.inner, Inner)


def test_runs_that_are_not_json_raise_value_error() -> None:
    # The replay loop catches this, logs it and skips the run's messages.
    with pytest.raises(ValueError):
        decode_run("n", b"[not json")
    with pytest.raises(ValueError):
        decode_run("n", b'["not an object"]')
    with pytest.raises(ValueError):
        decode_run("n", b'[{"jsonrpc": "2.0"}]')  # no method: validation, not construction


def test_the_handshake_versions_are_the_sdks_and_those_of_its_era() -> None:
    from mcp_db._sdk import HANDSHAKE_VERSIONS, SDK_MAJOR

    era = {"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"}
    assert era <= HANDSHAKE_VERSIONS
    assert "2026-07-28" not in HANDSHAKE_VERSIONS
    if SDK_MAJOR >= 2:
        from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

        assert frozenset(HANDSHAKE_PROTOCOL_VERSIONS) == HANDSHAKE_VERSIONS
    else:
        from mcp.shared.version import SUPPORTED_PROTOCOL_VERSIONS

        assert set(SUPPORTED_PROTOCOL_VERSIONS) <= HANDSHAKE_VERSIONS
