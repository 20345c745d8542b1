"""``make demo``: two nodes of ``examples/server.py`` behind an nginx round-robin load
balancer, sharing one redis-server. The SDK's client opens one session through the load
balancer, so consecutive requests of that session land on different nodes; then its stream
is cut mid-call and it resumes with Last-Event-ID, missing nothing.

Without nginx (or with ``--without-nginx``) it runs one node of two uvicorn workers on one
port instead (``uvicorn --workers 2``), so the session is still served across processes;
without redis-server, one process. It says which and why. Everything it starts runs on
loopback ports and is stopped at the end.

Run it from a checkout: ``python examples/demo.py [--json] [--without-nginx]``. With
``--json`` the narration goes to stderr and a JSON summary to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import mcp.client.streamable_http as _http
from mcp import ClientSession

# The throwaway redis-server and nginx of the test suite (tests/support/), from the checkout.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.nginx import Nginx  # noqa: E402
from tests.support.redis_server import (  # noqa: E402
    RedisServer,
    free_port,
    stop_process,
    wait_listening,
)

#: 1.2x and 2.x: ``streamable_http_client``, whose client resumes a cut stream by itself.
AUTO_RESUME = hasattr(_http, "streamable_http_client")
_open: Any = getattr(_http, "streamable_http_client", None) or getattr(
    _http, "streamablehttp_client", None
)

N, CUT_AT = 12, 4
WHERE_CALLS = 6
TIMEOUT_SECONDS = 30
APP = "examples.server:app"


class Node:
    """``uvicorn examples.server:app`` on a free loopback port, its output in a log; with
    ``workers`` > 1, that many worker processes share the port."""

    def __init__(self, name: str, env: dict[str, str], logs: Path, workers: int = 1) -> None:
        self.name = name
        self.port = free_port()
        self.workers = workers
        pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        self.env = {**os.environ, **env, "NODE_NAME": name, "PYTHONPATH": pythonpath}
        self.log = logs / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> None:
        command = [sys.executable, "-m", "uvicorn", APP, "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--log-level", "warning"]
        if self.workers > 1:
            command += ["--workers", str(self.workers)]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        if not wait_listening(self.port, self.process, 20):
            raise RuntimeError(f"{self.name} did not start:\n{self.tail()}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def text_of(result: Any) -> str:
    return str(result.content[0].text)


def steps_line(label: str, arrivals: list[tuple[float, int]]) -> str:
    first, last = arrivals[0], arrivals[-1]
    return f"  {label} steps {first[1]}-{last[1]} at {first[0]:.2f}-{last[0]:.2f} s"


@asynccontextmanager
async def client(url: str) -> AsyncIterator[ClientSession]:
    async with _open(url) as streams, ClientSession(streams[0], streams[1]) as session:
        yield session


async def drive(
    url: str, arrivals: list[tuple[float, int]], say: Callable[[str], None], owner_stats: bool
) -> dict[str, Any]:
    """One session through ``url``: every kind of request, then a cut stream that resumes.
    ``arrivals`` collects (seconds since the call, step) for each progress notification;
    with ``owner_stats`` the report has the store counters of the session's owner."""
    start = 0.0

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        arrivals.append((time.monotonic() - start, int(progress)))

    async with client(url) as session:
        init: Any = await session.initialize()
        version = getattr(init, "protocol_version", None) or init.protocolVersion  # 2.x / 1.x
        say(f"session open, protocol {version}")

        where = [text_of(await session.call_tool("where", {})) for _ in range(WHERE_CALLS)]
        say(f"where x{WHERE_CALLS}: {', '.join(w.split(' pid ')[0] for w in where)}")
        tools = sorted(t.name for t in (await session.list_tools()).tools)
        say(f"tools: {', '.join(tools)}")
        note = (await session.read_resource("note://hello")).contents[0]  # type: ignore[arg-type]
        note_text = getattr(note, "text", "")
        say(f"resource note://hello: {note_text!r}")
        prompt = await session.get_prompt("review", {"code": "x = 1"})
        prompt_text = getattr(prompt.messages[0].content, "text", "")
        say(f"prompt review: {prompt_text.splitlines()[0]!r} ...")

        cut_at = CUT_AT if AUTO_RESUME else 0
        if cut_at:
            say(f"count(n={N}): the server drops the stream after step {cut_at}")
        else:
            say(f"count(n={N}): no cut, this SDK's client does not resume by itself (mcp < 1.23)")
        start = time.monotonic()
        result = await session.call_tool(
            "count", {"n": N, "cut_at": cut_at}, progress_callback=on_progress
        )
        owner: dict[str, int] | None = None
        if owner_stats:
            owner = json.loads(text_of(await session.call_tool("store_stats", {})))
    # The resume shows as the longest pause between two notifications.
    if cut_at and len(arrivals) > 1:
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(arrivals)]
        cut = gaps.index(max(gaps)) + 1
        say(steps_line("live:   ", arrivals[:cut]))
        say(steps_line("resumed:", arrivals[cut:]) + ", after the client came back")
    say(f"result: {text_of(result)}")
    return {
        **({"owner_stats": owner} if owner is not None else {}),
        "protocol": version,
        "where": where,
        "tools": tools,
        "note": note_text,
        "prompt": prompt_text,
        "seen": [i for _, i in arrivals],
        "result": text_of(result),
    }


async def node_stats(url: str) -> dict[str, int]:
    """A node's store counters, asked directly (not through the load balancer)."""
    async with client(url) as session:
        await session.initialize()
        stats: dict[str, int] = json.loads(text_of(await session.call_tool("store_stats", {})))
        return stats


def settled_upstreams(lb: Nginx) -> list[str]:
    """nginx logs a request when it ends; wait for the last ones (the closed streams)."""
    before, deadline = lb.upstreams(), time.monotonic() + 2
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = lb.upstreams()
        if now == before:
            break
        before = now
    return before


def checks(report: dict[str, Any]) -> list[str]:
    failures = []
    # The owner runs every handler; other nodes relay to it. The owner may hand the session
    # once to a node that relays its requests twice in a row, and that one is the owner then.
    where = report["where"]  # node and process, in order
    if sum(a != b for a, b in itertools.pairwise(where)) > 1:
        failures.append(f"where was answered by {where}, not by the session's owner")
    if not {"count", "store_stats", "where"} <= set(report["tools"]):
        failures.append(f"tools/list gave {report['tools']}")
    if report["note"] != "hello from mcp-db":
        failures.append(f"note://hello read {report['note']!r}")
    if "x = 1" not in report["prompt"]:
        failures.append(f"the prompt came back as {report['prompt']!r}")
    if report["result"] != f"counted to {N}":
        failures.append(f"count returned {report['result']!r}")
    return failures


def error_text(error: BaseException) -> str:
    while len(getattr(error, "exceptions", ())) == 1:  # anyio's task groups nest errors
        error = error.exceptions[0]  # type: ignore[attr-defined]
    return f"{type(error).__name__}: {error}"


def main(*, json_output: bool = False, nginx: bool = True) -> int:
    """Runs the demo; 0 if everything worked. With ``json_output`` the narration goes to
    stderr and a JSON summary to stdout; without ``nginx``, two workers share one port."""
    out = sys.stderr if json_output else sys.stdout

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    logs = Path(tempfile.mkdtemp(prefix="mcp-db-demo-"))
    redis: RedisServer | None = None
    lb: Nginx | None = None
    nodes: list[Node] = []
    arrivals: list[tuple[float, int]] = []
    summary: dict[str, Any] = {"ok": False, "failures": []}
    try:
        env: dict[str, str] = {}
        if shutil.which("redis-server"):
            redis = RedisServer().start()
            env["MCP_DB_REDIS_URL"] = redis.url
            say(f"store: RedisEventStore on a redis-server started for the demo ({redis.url})")
            nodes = [Node("node-a", env, logs), Node("node-b", env, logs)]
            try:
                if not nginx:
                    raise RuntimeError("--without-nginx was given")
                lb = Nginx([f"127.0.0.1:{n.port}" for n in nodes])
            except RuntimeError as error:
                nodes = [Node("node-a", env, logs, workers=2)]
                say(f"two workers on one port instead of two nodes behind nginx, because {error}")
        else:
            say("store: MemoryEventStore (redis-server is not installed; events stay in memory)")
            say("single node, because nodes share sessions through Redis, which is missing")
            nodes = [Node("node-a", env, logs)]
        for node in nodes:
            node.start()
        if lb is not None:
            lb.start()
            say(
                f"cluster: {' and '.join(f'{n.name} (:{n.port})' for n in nodes)} with "
                f"SessionMiddleware, behind nginx round-robin ({lb.url})"
            )
        elif nodes[0].workers > 1:
            say(
                f"cluster: {nodes[0].name} (:{nodes[0].port}), uvicorn --workers "
                f"{nodes[0].workers} with SessionMiddleware; the kernel hands each connection "
                "to either worker"
            )
        url = lb.url if lb is not None else nodes[0].url

        # Workers share a port, so the demo cannot ask one of them directly: the session asks
        # its owner.
        workers = lb is None and nodes[0].workers > 1
        running = drive(url, arrivals, say, owner_stats=workers)
        report = asyncio.run(asyncio.wait_for(running, TIMEOUT_SECONDS))
        if workers:
            owner = report["where"][-1].replace("node-a pid", "owner, pid")
            stats = {owner: report.pop("owner_stats")}
        else:
            stats = {n.name: asyncio.run(node_stats(n.url)) for n in nodes}
        say(
            "store counters: "
            + "; ".join(
                f"{name} stored {s['stored']}, replayed {s['replayed']}"
                for name, s in stats.items()
            )
        )
        resumers = [name for name, s in stats.items() if s["replayed"]]
        if lb is not None and resumers:
            say(f"resumed on {', '.join(resumers)}, which replayed the missed events from Redis")
        failures = checks(report)
        where = Counter(w.split(" pid ")[0] for w in report["where"])
        say(f"where answers: {', '.join(f'{n.name} {where[n.name]}' for n in nodes)}")
        summary.update(report=report, stats=stats, where=dict(where))
        if workers:
            pids = list(dict.fromkeys(w.split(" pid ")[1] for w in report["where"]))
            say(
                f"  answered by the session's owner, pid {' then '.join(pids)}; the other worker "
                "relays the requests it accepts to the owner through Redis (or the owner hands "
                "the session to it, once)"
            )
        if lb is not None:
            say(
                "  the session's owner ran every handler; the other node relayed the requests "
                "it received to the owner through Redis"
            )
            by_port = {f"127.0.0.1:{n.port}": n.name for n in nodes}
            upstreams = Counter(by_port.get(u, u) for u in settled_upstreams(lb))
            say(
                f"load balancer: {sum(upstreams.values())} requests, "
                + ", ".join(f"{n.name} {upstreams[n.name]}" for n in nodes)
            )
            summary["load_balancer"] = dict(upstreams)
            if any(upstreams[n.name] == 0 for n in nodes):
                failures.append("nginx did not send requests to every node")

        seen = report["seen"]
        replayed = sum(s["replayed"] for s in stats.values())
        if seen == list(range(1, N + 1)):
            how = (
                f"; the client resumed with Last-Event-ID and the store replayed the {replayed} "
                "it had missed while away"
                if AUTO_RESUME
                else ""
            )
            once = "each exactly once and in order"
            say(f"summary: {len(seen)} of {N} progress notifications, {once}{how}")
        else:
            failures.append(f"the client saw progress {seen}")
        for failure in failures:
            say(f"FAILED: {failure}")
        summary.update(ok=not failures, failures=failures)
    except Exception as error:
        if isinstance(error, (TimeoutError, asyncio.TimeoutError)):  # one class from 3.11
            steps = [i for _, i in arrivals]
            failure = f"no answer within {TIMEOUT_SECONDS} s; progress seen: {steps}"
        else:
            failure = error_text(error)
        say(f"FAILED: {failure}")
        summary["failures"].append(failure)
    finally:
        if lb is not None:
            lb.stop()
        for node in nodes:
            node.stop()
            if not summary["ok"]:
                say(f"--- {node.name} log ---\n{node.tail()}")
        if redis is not None:
            redis.cleanup()
        shutil.rmtree(logs, ignore_errors=True)
    if json_output:
        print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--json", action="store_true", help="a JSON summary on stdout")
    options.add_argument(
        "--without-nginx", action="store_true", help="two uvicorn workers on one port"
    )
    args = options.parse_args()
    sys.exit(main(json_output=args.json, nginx=not args.without_nginx))
