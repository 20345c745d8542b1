"""``mcp-db doctor``: is this Redis fit for mcp-db, and are the nodes alive, in time, and
agreed on their request-state keys?

Each check is PASS, WARN or FAIL with one line of detail. FAIL means mcp-db cannot work
as deployed (Redis too old, commands missing, cluster down, nodes that cannot unseal each
other's request state); WARN means it works but something deserves a look (slow Redis,
eviction, no nodes, a node's clock off, a key rotation half done).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import redis
from redis.cluster import RedisCluster

from mcp_db._admin import Deployment
from mcp_db._core import redact
from mcp_db._report import ago, plural
from mcp_db._request_keys import unseals

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
#: Commands the nodes run: streams, scripts, pub/sub.
COMMANDS = ("XADD", "XRANGE", "XREAD", "XLEN", "EVALSHA", "PUBLISH", "SUBSCRIBE", "PEXPIRE")
PINGS = 7
#: Above this median PING round trip, every relayed request and append feels it.
SLOW_PING_MS = 10.0
#: A node clock further than this from Redis's skews record times and metrics.
SKEW_WARN_MS = 500
#: Past this share of ``maxmemory`` in use, Redis is about to refuse events and new sessions.
NEAR_FULL = 0.9


def _check(name: str, status: str, detail: str, **data: Any) -> dict[str, Any]:
    return {"name": name, "status": status, "detail": detail, **data}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:3] if p.isdigit())


def run(dep: Deployment) -> dict[str, Any]:
    """Every check, in order; ``ok`` is false if any failed."""
    client = dep.client
    info = client.info("server")
    version = str(info.get("redis_version", "0"))
    mode = "standalone"
    checks = [
        _check(
            "redis reachable",
            PASS,
            f"{redact(dep.url)}, Redis {version} ({'cluster' if dep.cluster else 'standalone'})",
            url=redact(dep.url),
        )
    ]
    if dep.cluster:
        versions = {
            str(node_info.get("redis_version", "0"))
            for node_info in client.info("server", target_nodes=RedisCluster.ALL_NODES).values()
        }
        version = min(versions, key=_version)
    ok_version = _version(version) >= (7,)
    checks.append(
        _check(
            "version",
            PASS if ok_version else FAIL,
            f"{version} >= 7" if ok_version else f"{version}: mcp-db needs Redis 7 or newer",
            version=version,
        )
    )
    checks.append(_commands(client))
    checks.append(_latency(client))
    if dep.cluster:
        cluster_info = client.cluster_info()
        state = str(cluster_info.get("cluster_state", "?"))
        masters = len(client.get_primaries())
        mode = f"cluster, {masters} masters, state {state}"
        checks.append(
            _check(
                "cluster mode",
                PASS if state == "ok" else FAIL,
                mode if state == "ok" else f"{mode}: some slots are not served; see CLUSTER INFO",
                cluster=True,
                masters=masters,
            )
        )
    else:
        checks.append(_check("cluster mode", PASS, mode, cluster=False))
    checks.append(_memory(client))
    counts = {kind: sum(1 for _ in dep.scan(kind)) for kind in dep.layout if kind != "bus"}
    checks.append(
        _check(
            "keys",
            PASS,
            f"{plural(counts['session'], 'session')}, {plural(counts['events'], 'event stream')}, "
            f"{plural(counts['claim'], 'relay claim')}, {plural(counts['node'], 'node heartbeat')}",
            counts=counts,
        )
    )
    nodes = [dep.node(node) for _, node, _ in dep.scan("node")]
    nodes = [n for n in nodes if n["alive"]]
    checks.append(_nodes(dep, nodes))
    checks.append(_skew(nodes))
    checks.append(request_keys(nodes))
    return {
        "ok": all(c["status"] != FAIL for c in checks),
        "prefix": dep.prefix,
        "checks": checks,
        "nodes": nodes,
    }


def _commands(client: Any) -> dict[str, Any]:
    try:
        names = client.execute_command("COMMAND LIST")
    except redis.ResponseError as exc:  # COMMAND not allowed for this ACL user
        return _check("streams", WARN, f"cannot list Redis commands ({exc}); not checked")
    known = {(n.decode() if isinstance(n, bytes) else str(n)).upper() for n in names}
    missing = [c for c in COMMANDS if c not in known]
    if missing:
        return _check(
            "streams",
            FAIL,
            f"Redis lacks {', '.join(missing)} (renamed or disabled?); mcp-db needs streams, "
            "scripts and pub/sub",
            missing=missing,
        )
    return _check("streams", PASS, "streams, scripts and pub/sub available")


def _latency(client: Any) -> dict[str, Any]:
    times = []
    for _ in range(PINGS):
        started = time.perf_counter()
        client.ping()
        times.append((time.perf_counter() - started) * 1000)
    p50, worst = statistics.median(times), max(times)
    detail = f"PING p50 {p50:.2f} ms, max {worst:.2f} ms over {PINGS} pings"
    slow = p50 > SLOW_PING_MS
    if slow:
        detail += "; every relayed request and event append pays this, keep Redis close"
    return _check(
        "latency", WARN if slow else PASS, detail, p50_ms=round(p50, 3), max_ms=round(worst, 3)
    )


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"


def _memory(client: Any) -> dict[str, Any]:
    """``maxmemory`` and its policy. Every mcp-db key has a TTL, so ``volatile-*`` evicts
    session records, leases and claims just as ``allkeys-*`` does. ``noeviction`` is safe:
    at the limit Redis refuses events and new sessions, while mcp-db's control writes
    (leases, claims, record changes) are scripts flagged ``allow-oom``."""
    memory = client.info("memory")
    limit = int(memory.get("maxmemory", 0) or 0)
    used = int(memory.get("used_memory", 0) or 0)
    policy = str(memory.get("maxmemory_policy", "noeviction"))
    data = {"policy": policy, "maxmemory": limit, "used_memory": used}
    if not limit:
        return _check("eviction", PASS, "no maxmemory limit", **data)
    usage = f"{_mib(used)} of maxmemory {_mib(limit)} in use ({used / limit:.0%})"
    if policy != "noeviction":
        which = (
            "keys with a TTL, and every mcp-db key has one"
            if policy.startswith("volatile-")
            else "any key"
        )
        return _check(
            "eviction",
            WARN,
            f"{usage}, policy {policy}: at the limit Redis evicts {which}: session records "
            "(clients get 404), node leases (live owners look dead and lose their sessions), "
            "relay claims and events; set maxmemory-policy noeviction",
            **data,
        )
    if used >= limit * NEAR_FULL:
        return _check(
            "eviction",
            WARN,
            f"{usage}, noeviction: near the limit. There Redis refuses new events (delivered "
            "live, not replayable) and new sessions (503); sessions that exist go on. Give "
            "Redis more memory or lower the store's ttl_seconds / max_events_per_stream",
            **data,
        )
    detail = (
        f"{usage}, noeviction: when full, Redis refuses events and new sessions, and evicts nothing"
    )
    return _check("eviction", PASS, detail, **data)


def _nodes(dep: Deployment, nodes: list[dict[str, Any]]) -> dict[str, Any]:
    if not nodes:
        return _check(
            "nodes",
            WARN,
            f"no live node heartbeat under prefix {dep.prefix!r}: no node is running, or the "
            "nodes use another prefix (RedisEventStore(prefix=...); --prefix, MCP_DB_PREFIX)",
            alive=0,
        )
    late = [
        n["node"]
        for n in nodes
        if isinstance(n.get("age_ms"), int)
        and isinstance(n.get("lease_ms"), int)
        and n["age_ms"] > n["lease_ms"] * 2 / 3
    ]
    detail = f"{len(nodes)} alive"
    if late:
        detail += f"; late heartbeats (a beat missed, busy event loop?): {', '.join(late)}"
    return _check("nodes", WARN if late else PASS, detail, alive=len(nodes))


def _skew(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    skews = {n["node"]: n["skew_ms"] for n in nodes if "skew_ms" in n}
    unknown = [n["node"] for n in nodes if "skew_ms" not in n]
    if not skews:
        detail = "no node to compare" if not nodes else "heartbeats carry no lease; not measured"
        return _check("clock skew", PASS if not nodes else WARN, detail)
    worst = max(skews.values(), key=abs)
    spread = max(skews.values()) - min(skews.values())
    detail = f"nodes vs Redis TIME: worst {worst:+d} ms; between nodes {spread} ms"
    off = [name for name, skew in skews.items() if abs(skew) > SKEW_WARN_MS]
    if off:
        detail += f"; clocks off by more than {SKEW_WARN_MS} ms on {', '.join(off)} (run NTP)"
    if unknown:
        detail += f"; not measured on {', '.join(unknown)} (no lease in the heartbeat)"
    status = WARN if off or unknown else PASS
    return _check("clock skew", status, detail, worst_ms=worst, spread_ms=spread)


#: The fix, as the check and the node's start-up warning both name it.
SHARE_KEYS = (
    "pass MCPServer(..., request_state_security=RequestStateSecurity(keys=[...])) with the "
    "same keys on every node (docs/deploy/2026-clients.md)"
)


def request_keys(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether a multi-round-trip request (protocol 2026-07-28) can have its rounds on any
    live node: each node must unseal the ``requestState`` every other one seals.

    A FAIL, not a WARN, when they cannot: such a request then fails with -32602 whenever
    two of its rounds land on different nodes, which behind a round-robin balancer is most
    of the time, and the reason is only in one node's log. A node on ephemeral keys among
    others is the commonest case (``MCPServer``'s default). Pure: ``nodes`` are the live
    nodes as ``Deployment.node`` reads them.
    """
    rings = {n["node"]: n["request_state"] for n in nodes if "request_state" in n}
    if not rings:
        detail = (
            "no node seals request state (mcp 1.x, or a server without it): not checked"
            if nodes
            else "no node to compare"
        )
        return _check("request-state keys", PASS, detail, groups={})
    data = _compare_rings(rings)
    status, detail = _verdict(data, len(nodes))
    if data["not_compared"]:
        detail += (
            f"; not compared (a codec of the application's own): {', '.join(data['not_compared'])}"
        )
    return _check("request-state keys", status, detail, **data)


def _compare_rings(rings: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The nodes grouped by fingerprint, those on ephemeral keys, those whose rings cannot
    be read (a custom codec), and the pairs ``[sealer, opener]`` whose rounds cannot cross:
    what a client would hit."""
    custom = sorted(name for name, ring in rings.items() if not ring.get("fingerprint"))
    compared = {name: ring for name, ring in sorted(rings.items()) if name not in custom}
    groups: dict[str, list[str]] = {}
    for name, ring in compared.items():
        groups.setdefault(ring["fingerprint"], []).append(name)
    broken = [
        [a, b]
        for a, sealer in compared.items()
        for b, opener in compared.items()
        if a != b and not unseals(sealer, opener)
    ]
    ephemeral = sorted(name for name, ring in rings.items() if ring.get("ephemeral") is True)
    return {"groups": groups, "ephemeral": ephemeral, "not_compared": custom, "broken": broken}


def _verdict(data: dict[str, Any], alive: int) -> tuple[str, str]:
    """The status and the detail for what :func:`_compare_rings` found among ``alive``
    live nodes."""
    groups, ephemeral, broken = data["groups"], data["ephemeral"], data["broken"]
    named = "; ".join(f"{fp}: {', '.join(names)}" for fp, names in groups.items())
    if ephemeral and alive > 1:
        return FAIL, (
            f"ephemeral keys (a key per process) on {', '.join(ephemeral)} while "
            f"{plural(alive, 'node')} are alive: a multi-round-trip request whose rounds land "
            f"on two nodes fails with -32602 'Invalid or expired requestState'; {SHARE_KEYS}"
        )
    if broken:
        pairs = ", ".join(f"{a} -> {b}" for a, b in broken[:6])
        more = f" and {len(broken) - 6} more" if len(broken) > 6 else ""
        return FAIL, (
            f"nodes hold different key rings (fingerprint: nodes) {named}; state sealed on one "
            f"node does not unseal on the other ({pairs}{more}): those rounds fail with "
            f"-32602; {SHARE_KEYS}"
        )
    if len(groups) > 1:
        return WARN, (
            f"key rings differ but every node unseals what the others seal, as halfway through "
            f"a rotation: {named}; finish it (every node on the same keys=[...])"
        )
    if ephemeral:
        return WARN, (
            f"the only node, {ephemeral[0]}, is on ephemeral keys: state it sealed does not "
            f"survive a restart, and a second node breaks multi-round-trip requests; {SHARE_KEYS}"
        )
    if not groups:
        return PASS, "no key ring to compare"
    ((fp, names),) = groups.items()
    return PASS, f"{plural(len(names), 'node')} share one key ring and audience: fingerprint {fp}"


def render(report: dict[str, Any]) -> list[str]:
    """The report as text lines."""
    lines = []
    for check in report["checks"]:
        lines.append(f"{check['status']}  {check['name']:<16} {check['detail']}")
        if check["name"] == "nodes" and report["nodes"]:
            rows = [("NODE", "PID", "HOST", "LAST BEAT", "SKEW")]
            for n in report["nodes"]:
                skew = n.get("skew_ms")
                rows.append(
                    (
                        n["node"],
                        str(n.get("pid") or "-"),
                        str(n.get("host") or "-"),
                        ago(n.get("age_ms")) + " ago" if "age_ms" in n else "-",
                        f"{skew:+d} ms" if isinstance(skew, int) else "-",
                    )
                )
            widths = [max(len(r[i]) for r in rows) for i in range(5)]
            for row in rows:
                cells = (c.ljust(w) for c, w in zip(row, widths, strict=True))
                lines.append(("      " + "  ".join(cells)).rstrip())
    counts = {s: sum(c["status"] == s for c in report["checks"]) for s in (PASS, WARN, FAIL)}
    lines.append(f"{counts[PASS]} passed, {counts[WARN]} warned, {counts[FAIL]} failed")
    return lines
