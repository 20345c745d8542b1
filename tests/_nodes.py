"""SDK servers under uvicorn in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mcp_db._redis_server import free_port, wait_listening

ROOT = Path(__file__).resolve().parent.parent


class Node:
    """``uvicorn <app>`` on a free loopback port; ``stop()``/``start()`` keep the port."""

    def __init__(
        self, app: str = "tests.servers.app:app", env: dict[str, str] | None = None
    ) -> None:
        self.app = app
        self.env = env or {}
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"mcp-db-node-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> Node:
        env = {**os.environ, **self.env, "PYTHONPATH": str(ROOT)}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    self.app,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        if not wait_listening(self.port, self.process, 20):
            raise RuntimeError(f"node on port {self.port} did not start:\n{self.output()}")
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def stop(self, *, kill: bool = False) -> None:
        if self.process is not None and self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
