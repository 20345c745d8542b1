"""Request-state keys without a process started: the fingerprint rule, what a real
``MCPServer`` (mcp 2.x) reports of its ring, and the doctor's comparison of nodes.

The end-to-end proof, rounds of one request on three nodes, is in
``test_request_state_e2e.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from mcp_db._doctor import FAIL, PASS, WARN, request_keys
from mcp_db._request_keys import describe, fingerprint
from mcp_db._sdk import SDK_MAJOR

needs_v2 = pytest.mark.skipif(SDK_MAJOR < 2, reason="request state is mcp 2.x (2026-07-28)")

A, B, C = b"\x01\x02\x03\x04", b"\x0a\x0b\x0c\x0d", b"\xff\xee\xdd\xcc"


def test_a_fingerprint_is_the_same_whatever_the_order_of_the_keys() -> None:
    assert fingerprint([A, B, C], "svc") == fingerprint([C, A, B], "svc")
    assert len(fingerprint([A], "svc")) == 16
    int(fingerprint([A], "svc"), 16)  # hex


def test_a_fingerprint_changes_with_any_key_or_the_audience() -> None:
    base = fingerprint([A, B], "svc")
    assert fingerprint([A, C], "svc") != base
    assert fingerprint([A], "svc") != base
    assert fingerprint([A, B, C], "svc") != base
    assert fingerprint([A, B], "other") != base
    assert fingerprint([A, B], None) != base
    # Audience and ids cannot run into each other.
    assert fingerprint([A], "ab") != fingerprint([A, b"ab"], None)


# -- a real server's ring (mcp 2.x) -----------------------------------------------------------


def _ring(**options: Any) -> dict[str, Any] | None:
    from mcp.server.mcpserver import MCPServer

    from mcp_db._sdk import request_keys as of_server
    from mcp_db._sdk.manager import find_session_manager

    server = MCPServer(options.pop("name", "svc"), **options)
    return of_server(find_session_manager(server.streamable_http_app()))


@needs_v2
def test_a_server_on_default_keys_reports_an_ephemeral_ring_of_its_own() -> None:
    one, two = _ring(), _ring()
    assert one is not None and two is not None
    assert one["ephemeral"] is True and two["ephemeral"] is True
    assert one["fingerprint"] != two["fingerprint"]  # a key per server
    assert one["audience"] == "svc" and len(one["keys"]) == 1


@needs_v2
def test_servers_given_the_same_keys_in_any_order_report_the_same_fingerprint() -> None:
    from mcp.server.request_state import RequestStateSecurity

    old, new = os.urandom(32), os.urandom(32)
    first = _ring(request_state_security=RequestStateSecurity(keys=[old, new]))
    second = _ring(request_state_security=RequestStateSecurity(keys=[new, old]))
    third = _ring(request_state_security=RequestStateSecurity(keys=[new]))
    other = _ring(name="other", request_state_security=RequestStateSecurity(keys=[old, new]))
    assert first is not None and second is not None and third is not None and other is not None
    assert first["ephemeral"] is False
    assert first["fingerprint"] == second["fingerprint"]
    assert first["mint"] != second["mint"]  # each seals with its first key
    assert third["fingerprint"] != first["fingerprint"]
    assert other["fingerprint"] != first["fingerprint"]  # another audience
    said = json.dumps(first)
    for key in (old, new):
        assert key.hex() not in said and key.hex().upper() not in said
        assert key.decode("latin-1") not in said


@needs_v2
def test_a_custom_codec_is_reported_without_a_fingerprint() -> None:
    from mcp.server.request_state import RequestStateSecurity

    class Kms:
        def seal(self, payload: bytes) -> str:
            return payload.decode()

        def unseal(self, token: str) -> bytes:
            return token.encode()

    ring = _ring(request_state_security=RequestStateSecurity(codec=Kms()))
    assert ring == {
        "codec": "test_a_custom_codec_is_reported_without_a_fingerprint.<locals>.Kms",
        "ephemeral": False,
    }


# -- the doctor's comparison ------------------------------------------------------------------


def _node(name: str, keys: list[bytes], audience: str = "svc", **extra: Any) -> dict[str, Any]:
    return {"node": name, "request_state": {**describe(keys, keys[0], audience, False), **extra}}


def test_the_doctor_passes_nodes_sharing_one_ring() -> None:
    check = request_keys([_node("n1", [A, B]), _node("n2", [B, A]), _node("n3", [A, B])])
    assert check["status"] == PASS, check
    assert list(check["groups"].values()) == [["n1", "n2", "n3"]]
    assert "3 nodes share one key ring" in check["detail"]


def test_the_doctor_fails_nodes_that_cannot_unseal_each_other_and_names_them() -> None:
    check = request_keys([_node("n1", [A]), _node("n2", [A]), _node("n3", [C])])
    assert check["status"] == FAIL, check
    assert sorted(check["groups"].values()) == [["n1", "n2"], ["n3"]]
    assert "n1 -> n3" in check["detail"] and "n3 -> n1" in check["detail"]
    assert "request_state_security=RequestStateSecurity(keys=[...])" in check["detail"]


def test_the_doctor_fails_a_node_on_ephemeral_keys_among_others() -> None:
    check = request_keys([_node("n1", [A], ephemeral=True), _node("n2", [B], ephemeral=True)])
    assert check["status"] == FAIL, check
    assert check["ephemeral"] == ["n1", "n2"] and "ephemeral" in check["detail"]


def test_the_doctor_warns_of_a_rotation_half_done_and_of_a_lone_ephemeral_node() -> None:
    # Phase one of a rotation on some nodes: [old, new] seals with old, which all hold.
    check = request_keys([_node("n1", [A]), _node("n2", [A, B])])
    assert check["status"] == WARN and "rotation" in check["detail"], check
    # Another audience, same keys: the audience claim refuses the rounds.
    check = request_keys([_node("n1", [A]), _node("n2", [A], audience="other")])
    assert check["status"] == FAIL, check
    alone = request_keys([_node("n1", [A], ephemeral=True)])
    assert alone["status"] == WARN and "restart" in alone["detail"], alone


def test_the_doctor_skips_nodes_that_report_no_keys() -> None:
    nodes = [{"node": "n1"}, {"node": "n2"}]  # mcp 1.x nodes
    check = request_keys(nodes)
    assert check["status"] == PASS and "not checked" in check["detail"], check
    assert request_keys([])["status"] == PASS
    custom = request_keys([{"node": "n1", "request_state": {"codec": "Kms", "ephemeral": False}}])
    assert custom["status"] == PASS and "not compared" in custom["detail"], custom


@needs_v2
def test_a_server_built_before_mcp_db_was_imported_has_an_unknown_ephemeral_flag() -> None:
    """mcp-db notes ephemeral rings from its import on: before that, it cannot know (a fresh
    interpreter, since this one imported mcp-db long ago)."""
    script = (
        "from mcp.server.mcpserver import MCPServer\n"
        "app = MCPServer('svc').streamable_http_app()\n"
        "from mcp_db._sdk import request_keys\n"
        "from mcp_db._sdk.manager import find_session_manager\n"
        "print(request_keys(find_session_manager(app))['ephemeral'])\n"
    )
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert ran.stdout.strip() == "None", ran.stderr
