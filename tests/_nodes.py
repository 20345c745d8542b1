"""SDK servers under uvicorn (or gunicorn with uvicorn workers) in subprocesses."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.redis_server import free_port, stop_process, wait_listening

ROOT = Path(__file__).resolve().parent.parent
#: Runs a node as a batch process, every thread of it (docs/deploy/workers.md).
BATCH = ("chrt", "--batch", "0")


class Node:
    """``uvicorn <app>`` on a free loopback port; ``stop()``/``start()`` keep the port.

    With ``workers > 1`` it is ``uvicorn --workers N``: N worker processes share the port,
    under a supervisor (``process``) that restarts a worker that dies. With
    ``gunicorn_preload``, the supervisor is ``gunicorn --preload`` with uvicorn's worker
    class: it imports the app once, then forks the workers (and any worker it restarts).
    ``wrapper``: a command the server runs under (``BATCH``: ``chrt --batch 0``)."""

    def __init__(
        self,
        app: str = "tests.servers.app:app",
        env: dict[str, str] | None = None,
        *,
        workers: int = 1,
        gunicorn_preload: bool = False,
        wrapper: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.wrapper = wrapper
        self.env = env or {}
        self.workers = workers
        self.gunicorn_preload = gunicorn_preload
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        # A file of its own: ports are reused, and a test reading the log of its node
        # must not read what an earlier node on the same port wrote (a restart of this
        # node appends to it).
        fd, log = tempfile.mkstemp(prefix=f"mcp-db-node-{self.port}-", suffix=".log")
        os.close(fd)
        self.log = Path(log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> Node:
        self.launch()
        return self.listening()

    def launch(self) -> None:
        """Starts the process, without waiting for it to listen (``listening``)."""
        env = {**os.environ, **self.env, "PYTHONPATH": str(ROOT)}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self._command(),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                # Its own process group, so stop() can end workers the supervisor left.
                start_new_session=self.workers > 1,
            )

    def listening(self) -> Node:
        """Waits until the launched node listens; RuntimeError with its output if it does
        not within 20 s."""
        assert self.process is not None, "launch() first"
        if not wait_listening(self.port, self.process, 20):
            raise RuntimeError(f"node on port {self.port} did not start:\n{self.output()}")
        return self

    def _command(self) -> list[str]:
        return [*self.wrapper, *self._server()]

    def _server(self) -> list[str]:
        if self.gunicorn_preload:
            return [
                *(sys.executable, "-m", "gunicorn", self.app, "--preload"),
                *("--worker-class", "uvicorn_worker.UvicornWorker"),
                *("--workers", str(self.workers), "--bind", f"127.0.0.1:{self.port}"),
                *("--log-level", "warning", "--graceful-timeout", "10"),
            ]
        return [
            *(sys.executable, "-m", "uvicorn", self.app),
            *("--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"),
            *(["--workers", str(self.workers)] if self.workers > 1 else []),
        ]

    def worker_pids(self, seconds: float = 20, besides: frozenset[int] = frozenset()) -> set[int]:
        """The PIDs of the workers, once each of them has answered a connection of its own
        (so all are up, and connections do get spread over them); ``besides`` excluded, as
        if they had not answered. RuntimeError, with the node's output, after ``seconds``."""
        pids: set[int] = set()
        deadline = time.monotonic() + seconds
        while len(pids) < self.workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only workers {pids} answered:\n{self.output()}")
            with httpx.Client(timeout=5) as http:  # a new connection each time
                pid = http.get(f"http://127.0.0.1:{self.port}/debug/pid").json()["pid"]
            if pid not in besides:
                pids.add(pid)
        return pids

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def signal_stop(self) -> None:
        """Sends SIGTERM, without waiting (``stop`` waits)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def stop(self, *, kill: bool = False) -> None:
        if self.process is not None:
            stop_process(self.process, kill=kill)
        if self.process is not None and self.workers > 1:
            # The supervisor is gone; a worker it did not take down (it was killed, or a
            # worker hung) must not keep the port. The group is this node's own.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process = None


def start_all(nodes: list[Node]) -> None:
    """Starts ``nodes`` side by side: each imports the app while the others do."""
    for node in nodes:
        node.launch()
    for node in nodes:
        node.listening()


def stop_all(nodes: list[Node]) -> None:
    """Stops ``nodes`` side by side: each shuts down while the others do."""
    for node in nodes:
        node.signal_stop()
    for node in nodes:
        node.stop()
