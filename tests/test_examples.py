"""The examples run as a user would run them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import mcp_db
from tests._client import AUTO_RESUME
from tests._nodes import ROOT


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
