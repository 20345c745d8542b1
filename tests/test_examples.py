"""The examples run as a user would run them."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp.types as types
import pytest

import mcp_db
from mcp_db._sdk import SDK_MAJOR
from tests._client import AUTO_RESUME, client_session, result_text
from tests._cluster import Cluster
from tests._nodes import ROOT, Node
from tests.support.redis_server import RedisServer


def demo(*args: str) -> subprocess.CompletedProcess[str]:
    """``python examples/demo.py ARGS``, as ``make demo`` runs it."""
    return subprocess.run(
        [sys.executable, "examples/demo.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def demo_counts_to_12(*args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Runs the demo with ``--json`` among ``args``, checks that its session counted to 12 with
    every notification seen (and resumed, where the client resumes by itself), and returns
    the run and its JSON summary."""
    ran = demo(*args)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    summary: dict[str, Any] = json.loads(ran.stdout)
    assert summary["ok"] is True and summary["failures"] == []
    assert summary["report"]["result"] == "counted to 12"
    assert summary["report"]["seen"] == list(range(1, 13))
    if AUTO_RESUME:
        assert sum(s["replayed"] for s in summary["stats"].values()) > 0
    return ran, summary


@pytest.mark.skipif(
    not AUTO_RESUME, reason="the demo relies on the client resuming by itself (mcp >= 1.23)"
)
def test_demo_resumes_a_cut_stream() -> None:
    done = demo()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "store: RedisEventStore" in done.stdout
    assert "summary: 12 of 12 progress notifications, each exactly once and in order" in done.stdout


@pytest.mark.one_sdk_line
def test_demo_runs_two_nodes_behind_nginx() -> None:
    ran, summary = demo_counts_to_12("--json")
    assert "session open" in ran.stderr  # the narration goes to stderr
    assert set(summary["load_balancer"]) == {"node-a", "node-b"}


@pytest.mark.one_sdk_line
def test_demo_without_nginx_runs_two_workers_on_one_port() -> None:
    """A machine without nginx still sees one session served across processes."""
    ran, summary = demo_counts_to_12("--json", "--without-nginx")
    assert "uvicorn --workers 2 with SessionMiddleware" in ran.stderr
    assert "load_balancer" not in summary


@pytest.mark.one_sdk_line
def test_the_installed_package_holds_no_demo_or_launcher() -> None:
    """The demo and the redis-server and nginx launchers live in the checkout (examples/,
    tests/support/), not in the wheel."""
    installed = Path(mcp_db.__file__).parent
    names = sorted(str(f.relative_to(installed)) for f in installed.rglob("*.py"))
    assert names, installed
    assert [n for n in names if any(w in n for w in ("demo", "nginx", "redis_server"))] == []


async def test_an_edit_on_one_node_reaches_a_subscriber_on_another(
    redis_server: RedisServer, prefix: str
) -> None:
    """examples/server.py on two nodes: ``edit_note`` called through one reaches a session
    subscribed to ``note://hello`` through the other (the README's bus example)."""
    env = {"MCP_DB_REDIS_URL": redis_server.url, "MCP_DB_PREFIX": prefix}
    nodes = [Node(app="examples.server:app", env=env) for _ in range(2)]
    heard: list[str] = []

    async def on_message(message: Any) -> None:
        notification = getattr(message, "root", message)
        if isinstance(notification, types.ResourceUpdatedNotification):
            heard.append(str(notification.params.uri))

    try:
        for node in nodes:
            node.start()
        async with (
            client_session(nodes[0].url, message_handler=on_message) as watching,
            client_session(nodes[1].url) as editing,
        ):
            with warnings.catch_warnings():  # mcp 2.x calls resources/subscribe deprecated
                warnings.simplefilter("ignore")
                await watching.subscribe_resource("note://hello")  # type: ignore[arg-type]
            for attempt in range(40):  # until the GET stream is up, updates pass it by
                await editing.call_tool("edit_note", {"text": f"edit {attempt}"})
                await anyio.sleep(0.1)
                if heard:
                    break
            assert heard and set(heard) == {"note://hello"}
    finally:
        for node in nodes:
            node.stop()


def _readme_runs(example: str) -> None:
    """The README shows ``examples/<example>`` as it is, from its first import on: what
    runs here is what a reader copies."""
    code = (ROOT / "examples" / example).read_text()
    body = code[code.index("\nimport ") + 1 :].strip()
    assert body in (ROOT / "README.md").read_text(), f"README.md no longer shows {example}"


@pytest.mark.fastmcp
async def test_the_fastmcp_example_serves_one_session_across_nodes(
    redis_server: RedisServer, prefix: str
) -> None:
    pytest.importorskip("fastmcp")
    from fastmcp import Client

    _readme_runs("fastmcp_server.py")
    cluster = Cluster(
        redis_server,
        prefix,
        size=2,
        app="examples.fastmcp_server:app",
        MCP_REQUEST_STATE_KEY="ab" * 32,
    ).start()
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    try:
        async with Client(cluster.url, mode="legacy", progress_handler=on_progress) as client:
            results = [(await client.call_tool("count", {"n": 5})).data for _ in range(4)]
        served_by = cluster.served_by()
    finally:
        cluster.stop()
    assert results == ["counted to 5"] * 4
    assert progress == [1, 2, 3, 4, 5] * 4
    assert len(set(served_by)) == 2


@pytest.mark.skipif(SDK_MAJOR < 2, reason="the example is written for mcp 2.x (MCPServer)")
async def test_the_mounted_example_serves_both_servers_across_nodes(
    redis_server: RedisServer, prefix: str
) -> None:
    _readme_runs("mounted.py")
    cluster = Cluster(redis_server, prefix, size=2, app="examples.mounted:app").start()
    base = cluster.url.removesuffix("/mcp")
    try:
        async with client_session(f"{base}/notes/mcp") as notes:
            added = [result_text(await notes.call_tool("add", {"text": "x"})) for _ in range(3)]
        async with client_session(f"{base}/search/mcp") as search:
            found = result_text(await search.call_tool("find", {"query": "y"}))
        async with httpx.AsyncClient() as http:
            health = (await http.get(f"{base}/health")).text
        served_by = cluster.served_by()
    finally:
        cluster.stop()
    assert added == ["added 'x'"] * 3
    assert found == "nothing matches 'y'"
    assert health == "ok"
    assert len(set(served_by)) == 2
