"""Multi-round-trip requests (protocol 2026-07-28) on three nodes behind nginx round robin,
each node an SDK server under uvicorn with ``SessionMiddleware`` and ``RedisEventStore``,
and the SDK's own ``Client`` answering the server's questions.

With one key shared by every node, a request whose rounds ran on three different nodes
completes. On ``MCPServer``'s default ephemeral keys the same request fails, each node
says why in its log as it starts, and ``mcp-db doctor`` fails, naming the nodes."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mcp_db._sdk import SDK_MAJOR
from tests._nodes import Node, start_all, stop_all
from tests.support.nginx import Nginx
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.skipif(SDK_MAJOR < 2, reason="request state is mcp 2.x (2026-07-28)")

if SDK_MAJOR >= 2:
    from mcp.client import Client
    from mcp.shared.exceptions import MCPError
    from mcp_types import ElicitResult

APP = "tests.servers.rounds:app"
WARNING = "request-state keys are ephemeral (a key per process)"
BIN = Path(sys.executable).parent / "mcp-db"


@contextmanager
def deployment(
    redis: RedisServer, prefix: str, key: str | None
) -> Iterator[tuple[list[Node], Nginx]]:
    """Three nodes of ``tests/servers/rounds.py`` and nginx round-robining over them."""
    env = {"MCP_DB_REDIS_URL": redis.url, "MCP_DB_PREFIX": prefix}
    if key is not None:
        env["MCP_DB_REQUEST_STATE_KEY"] = key
    nodes = [Node(APP, env=env) for _ in range(3)]
    lb = Nginx([f"127.0.0.1:{n.port}" for n in nodes])
    try:
        start_all(nodes)
        lb.start()
        yield nodes, lb
    finally:
        lb.stop()
        stop_all(nodes)


async def answer(context: Any, params: Any) -> ElicitResult:
    """The user: answers each question with its own text."""
    return ElicitResult(action="accept", content={"answer": params.message})


async def interview(url: str, questions: int) -> dict[str, Any] | MCPError:
    """What the tool answered, or the error the call failed with (caught inside the
    client's context, which would wrap it in an exception group on the way out)."""
    async with Client(url, mode="auto", elicitation_callback=answer) as client:
        try:
            result = await client.call_tool("interview", {"questions": questions})
        except MCPError as exc:
            return exc
    return json.loads(result.content[0].text)  # type: ignore[union-attr,no-any-return]


def doctor(redis: RedisServer, prefix: str) -> tuple[int, dict[str, Any]]:
    """``mcp-db doctor --json`` as a user runs it."""
    command = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "mcp_db.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_DB_")}
    env.update(MCP_DB_REDIS_URL=redis.url, MCP_DB_PREFIX=prefix)
    ran = subprocess.run(
        [*command, "doctor", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    return ran.returncode, json.loads(ran.stdout)


def keys_check(report: dict[str, Any]) -> dict[str, Any]:
    (check,) = [c for c in report["checks"] if c["name"] == "request-state keys"]
    return check


def log_of(node: Node) -> str:
    return node.log.read_text(errors="replace")


async def test_with_shared_keys_the_rounds_of_one_request_run_on_three_nodes(
    redis_server: RedisServer, prefix: str
) -> None:
    with deployment(redis_server, prefix, secrets.token_hex(32)) as (nodes, lb):
        done = await interview(lb.url, questions=2)
        assert not isinstance(done, MCPError), done
        pids = {n.process.pid for n in nodes if n.process is not None}
        assert done["answers"] == ["question 1", "question 2"], done
        assert len(done["pids"]) == 3 and set(done["pids"]) == pids, (done, pids)
        code, report = doctor(redis_server, prefix)
        check = keys_check(report)
        assert code == 0 and check["status"] == "PASS", check
        assert [sorted(names) for names in check["groups"].values()] == [
            sorted(n["node"] for n in report["nodes"])
        ]
        for node in nodes:
            assert WARNING not in log_of(node)


async def test_on_ephemeral_keys_the_request_fails_and_both_the_nodes_and_the_doctor_say_why(
    redis_server: RedisServer, prefix: str
) -> None:
    with deployment(redis_server, prefix, None) as (nodes, lb):
        failed = await interview(lb.url, questions=2)
        assert isinstance(failed, MCPError), failed
        assert failed.error.code == -32602, failed.error
        assert failed.error.message == "Invalid or expired requestState"
        for node in nodes:
            assert log_of(node).count(WARNING) == 1, log_of(node)
            assert "request_state_security=RequestStateSecurity(keys=[...])" in log_of(node)
        code, report = doctor(redis_server, prefix)
        check = keys_check(report)
        assert code == 1 and report["ok"] is False, report
        assert check["status"] == "FAIL", check
        assert sorted(check["ephemeral"]) == sorted(n["node"] for n in report["nodes"])
        assert len(check["groups"]) == 3, check  # a key per process
