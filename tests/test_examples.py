"""The examples run as a user would run them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests._client import AUTO_RESUME
from tests._nodes import ROOT


@pytest.mark.skipif(
    not AUTO_RESUME, reason="the demo relies on the client resuming by itself (mcp >= 1.23)"
)
def test_demo_resumes_a_cut_stream() -> None:
    done = subprocess.run(
        [sys.executable, "examples/demo.py"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "store: RedisEventStore" in done.stdout
    assert "summary: 12 of 12 progress notifications, each exactly once and in order" in done.stdout
