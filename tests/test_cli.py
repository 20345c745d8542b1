"""The ``mcp-db`` command against a live deployment: three uvicorn nodes behind nginx on one
redis-server, with sessions made by the SDK's own client; then against a Redis Cluster, a
TLS Redis with an ACL user, and bad input of every kind.

Every command runs at least once as a user runs it: the installed console script, in a
subprocess, configured through ``MCP_DB_REDIS_URL`` and ``MCP_DB_PREFIX`` (``cli``). Each
such run costs a second of CPU (Python starting, ``mcp`` imported), so the variants of a
command run ``mcp_db.cli.main`` in this process instead, with the options as flags (``run``):
the same code, minus the process.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from mcp_db import _core
from mcp_db._core import parse_event_id
from mcp_db.cli import main
from tests._client import PROTOCOL, client_session, result_text
from tests._cluster import Cluster
from tests._redis_deployments import RedisCluster, TlsRedis
from tests.support.redis_server import RedisServer, free_port

# The mcp-db command and the core, not the SDK: see tests/conftest.py.
pytestmark = pytest.mark.one_sdk_line

BIN = Path(sys.executable).parent / "mcp-db"
COMMAND = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "mcp_db.cli"]


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def cli(*args: str, url: str | None = None, prefix: str | None = None) -> Ran:
    """``mcp-db ARGS`` in a subprocess, the deployment in its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_DB_")}
    env.update({"MCP_DB_REDIS_URL": url} if url else {})
    env.update({"MCP_DB_PREFIX": prefix} if prefix else {})
    process = await asyncio.create_subprocess_exec(
        *COMMAND, *args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


def _in_process(args: list[str]) -> Ran:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(args)
        except SystemExit as exit:  # argparse
            code = exit.code if isinstance(exit.code, int) else 1
    return Ran(code, out.getvalue(), err.getvalue())


async def run(*args: str, url: str, prefix: str = "mcp") -> Ran:
    """``mcp_db.cli.main`` in this process (in a thread: ``sessions close`` runs its own
    event loop), the deployment given as flags."""
    return await asyncio.to_thread(_in_process, ["--redis-url", url, "--prefix", prefix, *args])


@pytest.fixture(scope="module")
def deployment(redis_server: RedisServer) -> Iterator[Cluster]:
    cluster = Cluster(redis_server, f"t-cli-{uuid.uuid4().hex[:8]}", size=3).start()
    yield cluster
    cluster.stop()


def where(cluster: Cluster) -> dict[str, str]:
    env = cluster.nodes[0].env
    return {"url": env["MCP_DB_REDIS_URL"], "prefix": env["MCP_DB_PREFIX"]}


def session_ids(url: str, prefix: str) -> set[str]:
    """The sessions recorded in Redis, read directly rather than through the CLI."""
    pattern = dict(_core.key_layout(prefix))["session"]
    with redis.Redis.from_url(url) as r:
        cluster = r.info("cluster").get("cluster_enabled")
    client = redis.RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
    with client:
        found = (_core.parse_key(prefix, k.decode()) for k in client.scan_iter(match=pattern))
        return {p[1] for p in found if p is not None and p[0] == "session"}


@asynccontextmanager
async def new_session(cluster: Cluster) -> AsyncIterator[tuple[Any, str]]:
    """An SDK client session through the load balancer, and its ID."""
    before = session_ids(**where(cluster))
    async with client_session(cluster.url) as session:
        (session_id,) = session_ids(**where(cluster)) - before
        yield session, session_id


def events_of(ran: Ran) -> list[dict[str, Any]]:
    assert ran.code == 0, ran.err
    return [json.loads(line) for line in ran.out.splitlines()]


def text(event: dict[str, Any]) -> str:
    return json.dumps(event["message"])


# -- a live deployment ------------------------------------------------------------------------


async def test_list_show_and_tail_a_live_session(deployment: Cluster) -> None:
    at = where(deployment)
    async with new_session(deployment) as (session, session_id):
        assert result_text(await session.call_tool("echo", {"text": "hello-cli"})) == "hello-cli"

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            pass  # the notifications are what the test reads back from Redis

        steps = await session.call_tool("steps", {"n": 4}, progress_callback=on_progress)
        assert result_text(steps) == "done 4"
        table = await cli("sessions", "list", **at)
        show = await cli("sessions", "show", session_id, "--json", **at)
        tail = await cli("events", "tail", session_id, "--json", **at)
        listed = await run("sessions", "list", "--json", **at)
        closed = await run("sessions", "list", "--state", "closed", "--json", **at)
        shown = await run("sessions", "show", session_id, **at)
        doctor = await run("doctor", "--json", **at)

    assert listed.code == 0, listed.err
    (row,) = [r for r in listed.json()["sessions"] if r["id"] == session_id]
    assert row["state"] == "ACTIVE"
    assert row["owner"] in {n["node"] for n in doctor.json()["nodes"]}
    assert row["epoch"] == 1
    assert row["streams"] >= 2  # one per request with a stream: echo's and steps' at least
    assert 0 <= row["created_age_ms"] < 60_000
    assert session_id not in {r["id"] for r in closed.json()["sessions"]}

    assert table.code == 0, table.err
    header, *lines = table.out.splitlines()
    assert header.split() == ["SESSION", "STATE", "OWNER", "EPOCH", "CREATED", "UPDATED", "STREAMS"]
    (line,) = [ln for ln in lines if ln.startswith(session_id)]
    assert line.split()[1:4] == ["ACTIVE", row["owner"], "1"]
    assert line.split()[-1] == str(row["streams"])

    assert show.code == 0, show.err
    found = show.json()
    assert found["record"]["state"] == "ACTIVE"
    assert found["record"]["init"]["clientInfo"]["name"]
    assert found["owner"]["node"] == row["owner"] and found["owner"]["alive"] is True
    assert len(found["streams"]) == row["streams"]
    assert all(s["events"] >= 1 and s["last_id"] for s in found["streams"])
    assert f"owner     {row['owner']} at epoch 1, heartbeat alive" in shown.out
    assert f"streams   {row['streams']}" in shown.out

    events = events_of(tail)
    responses = [e for e in events if e["kind"] == "response"]
    assert any("hello-cli" in text(e) for e in responses), responses
    (done,) = [e for e in responses if "done 4" in text(e)]
    notes = [e for e in events if e["stream"] == done["stream"] and e["kind"] == "notification"]
    assert [f"step {i}" in text(e) for i, e in enumerate(notes)] == [True] * 4
    order = [tuple(map(int, e["id"].split("-"))) for e in events]
    assert order == sorted(order)
    # Each event's ID is the one the SDK's client saw: it names the session and stream.
    assert all(parse_event_id(e["event_id"]) == (session_id, e["stream"]) for e in events)

    one = await run("events", "tail", session_id, "--stream", done["stream"], **at)
    assert one.code == 0, one.err
    lines = one.out.splitlines()
    assert len(lines) == len([e for e in events if e["stream"] == done["stream"]])
    assert all(ln.split()[1] == done["stream"] for ln in lines)
    assert lines[-1].split()[2] == "response" and "done 4" in lines[-1]


async def test_tail_follow_prints_new_events_until_interrupted(deployment: Cluster) -> None:
    at = where(deployment)
    async with new_session(deployment) as (session, session_id):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MCP_DB_")}
        process = await asyncio.create_subprocess_exec(
            *COMMAND,
            *("--redis-url", at["url"], "--prefix", at["prefix"]),
            *("events", "tail", session_id, "--follow", "--json"),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        seen: list[dict[str, Any]] = []
        try:
            await asyncio.sleep(1.5)  # started, and printed what there was
            # Each call is a new stream of the session, which the command has to find.
            await session.call_tool("echo", {"text": "followed-1"})
            await session.call_tool("echo", {"text": "followed-2"})

            async def until_the_second() -> None:
                assert process.stdout is not None
                while not any("followed-2" in text(e) for e in seen):
                    seen.append(json.loads(await process.stdout.readline()))

            await asyncio.wait_for(until_the_second(), 15)
        finally:
            process.send_signal(signal.SIGINT)
            code = await asyncio.wait_for(process.wait(), 10)
    assert code == 130
    followed = [text(e) for e in seen if e["kind"] == "response" and "followed-" in text(e)]
    assert len(followed) == 2 and "followed-1" in followed[0]


async def test_close_gives_404_on_every_node_and_the_owner_lets_go(deployment: Cluster) -> None:
    at = where(deployment)
    async with new_session(deployment) as (session, session_id):
        await session.call_tool("echo", {"text": "before"})
        assert sum(deployment.session_counts()) == 1
        closed = await cli("sessions", "close", session_id, "--json", **at)
        assert closed.code == 0, closed.err
        done = closed.json()
        assert done["state"] == "CLOSED" and done["already_closed"] is False
        assert done["notified_nodes"] == 3  # every node listens on the bus
        headers = {
            "accept": "application/json, text/event-stream",
            "mcp-session-id": session_id,
            "mcp-protocol-version": PROTOCOL,
        }
        body = {"jsonrpc": "2.0", "id": 99, "method": "tools/list"}
        async with httpx.AsyncClient(timeout=10) as http:
            for url in [deployment.url] * 3 + [n.url for n in deployment.nodes]:
                response = await http.post(url, json=body, headers=headers)
                assert response.status_code == 404, (url, response.text)
                assert response.json()["error"]["message"] == "Session not found"
        # The SDK's client fails the call; how it says so varies by SDK line.
        with pytest.raises(Exception, match=r"Session (not found|terminated)"):
            await asyncio.wait_for(session.call_tool("echo", {"text": "after"}), 10)
        deadline = time.monotonic() + 5
        while sum(deployment.session_counts()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert deployment.session_counts() == [0, 0, 0], "the owner let go of the transport"
    again = await run("sessions", "close", session_id, "--json", **at)
    assert again.code == 0 and again.json()["already_closed"] is True
    again = await run("sessions", "close", session_id, **at)
    assert again.code == 0 and "already closed" in again.out
    show = await run("sessions", "show", session_id, "--json", **at)
    assert show.json()["record"]["state"] == "CLOSED"


async def test_doctor_passes_and_reports_every_node(deployment: Cluster) -> None:
    at = where(deployment)
    report = await cli("doctor", "--json", **at)
    assert report.code == 0, report.out + report.err
    found = report.json()
    assert found["ok"] is True
    statuses = {c["name"]: c["status"] for c in found["checks"]}
    assert statuses.pop("latency") in ("PASS", "WARN")  # a busy machine may be slow
    assert statuses == {
        "redis reachable": "PASS",
        "version": "PASS",
        "streams": "PASS",
        "cluster mode": "PASS",
        "eviction": "PASS",
        "keys": "PASS",
        "nodes": "PASS",
        "clock skew": "PASS",
        "request-state keys": "PASS",  # the test server shares its keys
    }
    nodes = found["nodes"]
    pids = [n.process.pid for n in deployment.nodes if n.process is not None]
    assert sorted(n["pid"] for n in nodes) == sorted(pids)
    assert {n["host"] for n in nodes} == {socket.gethostname()}
    for node in nodes:
        assert node["alive"] and 0 <= node["age_ms"] <= node["lease_ms"]
        assert abs(node["skew_ms"]) < 500  # one host, one clock, give or take a round trip
    (keys,) = [c for c in found["checks"] if c["name"] == "keys"]
    assert keys["counts"]["node"] == 3

    shown = await run("doctor", **at)
    assert shown.code == 0
    assert "PASS  nodes            3 alive" in shown.out
    lines = shown.out.splitlines()
    for node in nodes:
        assert any(ln.split()[:3] == [node["node"], str(node["pid"]), node["host"]] for ln in lines)
    assert lines[-1].endswith("0 failed")


# -- bad input --------------------------------------------------------------------------------


async def test_an_unknown_session_is_not_found(deployment: Cluster) -> None:
    at = where(deployment)
    runs = [await cli("sessions", "show", "no-such-session", **at)]
    for args in (["sessions", "close"], ["events", "tail"], ["sessions", "show", "--json"]):
        runs.append(await run(*args, "no-such-session", **at))
    for ran in runs:
        assert ran.code == 3, ran
        assert ran.out == ""
        assert "no session 'no-such-session'" in ran.err
        assert len(ran.err.strip().splitlines()) == 1


async def test_an_unknown_stream_is_not_found(deployment: Cluster) -> None:
    at = where(deployment)
    async with new_session(deployment) as (session, session_id):
        await session.call_tool("echo", {"text": "x"})
        ran = await run("events", "tail", session_id, "--stream", "nope", **at)
    assert ran.code == 3
    assert f"session {session_id} has no stream 'nope'; its streams: " in ran.err


async def test_an_unreachable_redis_names_the_url_and_hides_the_password() -> None:
    port = free_port()
    url = f"redis://admin:hunter2@127.0.0.1:{port}/0"
    runs = [
        await cli("sessions", "list", url=url),
        await run("sessions", "show", "x", url=url),
        await run("events", "tail", "x", "--follow", url=url),
        await run("doctor", "--json", url=url),
        await run("doctor", url=url),
    ]
    for ran in runs:
        assert ran.code == 4, ran
        assert "hunter2" not in ran.out + ran.err
        assert f"mcp-db: cannot reach Redis at redis://admin:***@127.0.0.1:{port}/0" in ran.err
        assert "connection refused; is redis-server running? set --redis-url" in ran.err
    assert runs[3].json()["checks"][0]["status"] == "FAIL"
    assert runs[4].out.startswith("FAIL  redis reachable")
    garbled = await run("sessions", "list", url="http://example.com")
    assert garbled.code == 4 and "invalid Redis URL http://example.com" in garbled.err


async def test_a_wrong_prefix_finds_nothing_and_says_where_it_looked(deployment: Cluster) -> None:
    url = where(deployment)["url"]
    async with new_session(deployment) as (_, session_id):
        listed = await cli("sessions", "list", url=url, prefix="not-the-prefix")
        as_json = await run("sessions", "list", "--json", url=url, prefix="not-the-prefix")
        show = await run("sessions", "show", session_id, url=url, prefix="not-the-prefix")
        doctor = await run("doctor", "--json", url=url, prefix="not-the-prefix")
    assert listed.code == 0 and listed.out == ""
    assert "no sessions under prefix 'not-the-prefix'" in listed.err
    assert "check --prefix or MCP_DB_PREFIX" in listed.err
    assert as_json.code == 0
    assert as_json.json() == {"prefix": "not-the-prefix", "total": 0, "sessions": []}
    assert show.code == 3
    assert doctor.code == 0  # nothing is broken, and no node runs under that prefix
    (nodes,) = [c for c in doctor.json()["checks"] if c["name"] == "nodes"]
    assert nodes["status"] == "WARN" and nodes["alive"] == 0
    assert "no live node heartbeat under prefix 'not-the-prefix'" in nodes["detail"]


async def test_bad_usage_exits_2() -> None:
    runs = [await cli("sessions", "list", "--limit", "0")]
    for args in (
        [],
        ["sessions"],
        ["frobnicate"],
        ["demo"],  # the demo is make demo's (examples/demo.py), not the package's
        ["sessions", "show"],
        ["sessions", "list", "--state", "bogus"],
        ["--prefix", "a{b", "doctor"],
        ["events", "tail"],
        ["events", "tail", "x", "--stream"],
    ):
        runs.append(await asyncio.to_thread(_in_process, args))
    for ran in runs:
        assert ran.code == 2, ran
        assert "usage: mcp-db" in ran.err and "error:" in ran.err


async def test_doctor_fails_when_redis_lacks_streams() -> None:
    """A Redis with XADD renamed away cannot host mcp-db: a FAIL, exit 1."""
    server = RedisServer(args=["--rename-command", "XADD", ""]).start()
    try:
        ran = await run("doctor", url=server.url)
    finally:
        server.cleanup()
    assert ran.code == 1, ran
    assert "FAIL  streams          Redis lacks XADD" in ran.out
    assert ran.out.splitlines()[-1].endswith("1 failed")


async def test_doctor_warns_of_a_maxmemory_policy_that_evicts_mcp_db_keys() -> None:
    """Every mcp-db key has a TTL, so volatile-* evicts records and leases like allkeys-*;
    noeviction passes until Redis is nearly full."""
    server = RedisServer().start()
    admin = redis.Redis.from_url(server.url)
    try:
        used = int(admin.info("memory")["used_memory"])
        found: dict[str, dict[str, Any]] = {}
        for policy, limit in [
            ("allkeys-lru", used * 10),
            ("volatile-ttl", used * 10),
            ("noeviction", used * 10),
            ("noeviction", used + 1024),
        ]:
            admin.config_set("maxmemory-policy", policy)
            admin.config_set("maxmemory", limit)
            ran = await run("doctor", "--json", url=server.url)
            assert ran.code == 0, ran  # a warning, not a failure
            (check,) = [c for c in ran.json()["checks"] if c["name"] == "eviction"]
            found[f"{policy} {'near' if limit < used * 2 else 'room'}"] = check
        admin.config_set("maxmemory", 0)
        unlimited = await run("doctor", url=server.url)
    finally:
        admin.close()
        server.cleanup()
    assert found["allkeys-lru room"]["status"] == "WARN"
    assert "evicts any key" in found["allkeys-lru room"]["detail"]
    assert found["volatile-ttl room"]["status"] == "WARN"
    assert "every mcp-db key has one" in found["volatile-ttl room"]["detail"]
    assert "node leases" in found["volatile-ttl room"]["detail"]
    assert found["noeviction room"]["status"] == "PASS", found
    assert found["noeviction near"]["status"] == "WARN"
    assert "near the limit" in found["noeviction near"]["detail"]
    assert "PASS  eviction         no maxmemory limit" in unlimited.out


# -- Redis Cluster and TLS ------------------------------------------------------------------


async def test_every_command_on_a_redis_cluster(redis_cluster: RedisCluster, prefix: str) -> None:
    """Two nodes on a 3-primary Redis Cluster: sessions spread over the primaries are listed,
    shown, tailed and closed (404 on every node), and doctor sees the cluster and the nodes."""
    deployment = Cluster(redis_cluster, prefix, size=2).start()  # type: ignore[arg-type]
    at = {"url": redis_cluster.url, "prefix": prefix}
    try:
        clients = [new_session(deployment) for _ in range(4)]
        opened = [await c.__aenter__() for c in clients]
        for i, (session, _) in enumerate(opened):
            assert result_text(await session.call_tool("echo", {"text": f"on-{i}"})) == f"on-{i}"
        ids = [session_id for _, session_id in opened]
        listed = await cli("sessions", "list", "--json", **at)
        show = await run("sessions", "show", ids[0], "--json", **at)
        tail = await run("events", "tail", ids[1], "--json", **at)
        doctor = await run("doctor", "--json", **at)
        closed = await run("sessions", "close", ids[2], "--json", **at)
        async with httpx.AsyncClient(timeout=10) as http:
            statuses = [
                (
                    await http.post(
                        node.url,
                        json={"jsonrpc": "2.0", "id": 9, "method": "tools/list"},
                        headers={
                            "accept": "application/json, text/event-stream",
                            "mcp-session-id": ids[2],
                            "mcp-protocol-version": PROTOCOL,
                        },
                    )
                ).status_code
                for node in deployment.nodes
            ]
        for client in reversed(clients):
            await client.__aexit__(None, None, None)
    finally:
        deployment.stop()
    assert listed.code == 0, listed.err
    rows = {r["id"]: r for r in listed.json()["sessions"]}
    assert set(ids) <= set(rows) and all(rows[s]["state"] == "ACTIVE" for s in ids)
    found = show.json()
    assert found["owner"]["alive"] and found["record"]["state"] == "ACTIVE"
    assert any("on-1" in text(e) for e in events_of(tail))
    report = doctor.json()
    assert doctor.code == 0 and report["ok"], report
    (mode,) = [c for c in report["checks"] if c["name"] == "cluster mode"]
    assert mode["status"] == "PASS" and mode["masters"] == 3
    assert len(report["nodes"]) == 2 and all(n["alive"] for n in report["nodes"])
    assert closed.code == 0, closed.err
    assert closed.json()["already_closed"] is False
    assert closed.json()["notified_nodes"] == 2  # both nodes, subscribed on the cluster's hub
    assert statuses == [404, 404]


async def test_tls_with_an_acl_user(prefix: str) -> None:
    """rediss:// with user:password: reading and closing work; a wrong password or an
    untrusted certificate is refused with exit 4; no password is ever printed."""
    server = TlsRedis().start()
    url = server.url()
    try:
        with redis.Redis.from_url(url) as r:
            r.hset(
                _core.key_of(prefix, "session", "tls-session"),
                mapping={"state": "ACTIVE", "version": 2, "owner": "n", "epoch": 1},
            )
        listed = await cli("sessions", "list", "--json", url=url, prefix=prefix)
        doctor = await run("doctor", url=url, prefix=prefix)
        closed = await run("sessions", "close", "tls-session", url=url, prefix=prefix)
        with redis.Redis.from_url(url) as r:
            state = r.hget(_core.key_of(prefix, "session", "tls-session"), "state")
        wrong = await run("sessions", "list", url=server.url("wrong-pw"))
        untrusted = await run("sessions", "list", url=server.url(ca=False))
    finally:
        server.cleanup()
    port = server.tls_port
    assert listed.code == 0, listed.err
    sessions = [(r["id"], r["state"]) for r in listed.json()["sessions"]]
    assert sessions == [("tls-session", "ACTIVE")]
    assert doctor.code == 0, doctor.out + doctor.err
    assert f"PASS  redis reachable  rediss://mcp:***@127.0.0.1:{port}/0?ssl_ca_certs=" in doctor.out
    assert closed.code == 0, closed.err
    assert state == b"CLOSED"
    assert wrong.code == 4
    assert f"Redis at rediss://mcp:***@127.0.0.1:{port}/0" in wrong.err
    assert "refused the credentials" in wrong.err
    assert untrusted.code == 4  # the test's own CA is not among the system's
    assert "certificate verify failed" in untrusted.err and "ssl_ca_certs" in untrusted.err
    for ran in (listed, doctor, closed, wrong, untrusted):
        assert TlsRedis.PASSWORD not in ran.out + ran.err and "wrong-pw" not in ran.out + ran.err
