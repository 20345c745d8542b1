"""What the ``mcp-db`` command reads from a deployment's Redis: sessions and nodes (events:
``_tail.py``; checks: ``_doctor.py``).

Reads go through redis-py (SCAN, HMGET, HGETALL, XLEN, INFO, TIME, PTTL), on a standalone
Redis or a Redis Cluster alike. The one write, closing a session, goes through the Rust core
so that it runs the very script a DELETE runs. Key names come from the core
(``key_layout``, ``key_of``, ``parse_key``): nothing here knows how a key is spelled.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import redis
from redis.cluster import RedisCluster

from mcp_db import _core
from mcp_db._core import Refusal, Transition, redact
from mcp_db._report import Progress, text
from mcp_db.errors import McpDbError

#: Fields of a session record that a listing shows.
LIST_FIELDS = ("state", "owner", "epoch", "created", "updated", "node")
#: A closed session's tombstone lives at least this long (its idle TTL if longer).
MIN_TOMBSTONE_MS = 60_000
#: Keys per pipelined batch, and per SCAN call.
BATCH = 500


class AdminError(Exception):
    """A failure the command reports on one line, with its exit code."""

    exit_code = 1


class NotFound(AdminError):
    exit_code = 3


class Unreachable(AdminError):
    exit_code = 4


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _int(value: Any) -> int | None:
    try:
        return int(text(value))
    except ValueError:
        return None


def connect(url: str, timeout: float = 5.0) -> tuple[Any, bool]:
    """A redis-py client for ``url`` and whether it is a Redis Cluster (then a
    ``RedisCluster``, whose SCAN covers every master)."""
    options: dict[str, Any] = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
    try:
        client: Any = redis.Redis.from_url(url, **options)
    except ValueError as exc:
        raise Unreachable(
            f"invalid Redis URL {redact(url)}: {exc}; use redis://[user:password@]host:port/db, "
            "or rediss://... for TLS"
        ) from None
    try:
        cluster = bool(client.info("cluster").get("cluster_enabled"))
    except redis.RedisError as exc:
        client.close()
        raise unreachable(exc, url) from None
    if cluster:
        client.close()
        try:
            client = RedisCluster.from_url(url, **options)
        except (redis.RedisError, ValueError) as exc:
            raise unreachable(exc, url) from None
    return client, cluster


def unreachable(exc: BaseException, url: str) -> AdminError:
    """The one-line error for a Redis that cannot be reached or refuses us (exit 4), or
    that answered a command with an error (exit 1)."""
    where = redact(url)
    reason = str(exc).strip().rstrip(".") or type(exc).__name__
    if isinstance(exc, redis.AuthenticationError) or "WRONGPASS" in reason or "NOAUTH" in reason:
        return Unreachable(
            f"Redis at {where} refused the credentials ({reason}); "
            "put the right user and password in the URL: redis://user:password@host:port/db"
        )
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return Unreachable(
            f"Redis at {where} refused a command for this user ({reason}); "
            "grant the ACL user read access to the prefix's keys (+@read +@keyspace +info +time)"
        )
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, OSError)):
        if "refused" in reason.lower():
            reason = "connection refused"
        hint = "is redis-server running?"
        if url.startswith("rediss:") or "ssl" in reason.lower() or "certificate" in reason.lower():
            hint = "is the server's TLS certificate trusted (ssl_ca_certs=..., ssl_cert_reqs=...)?"
        return Unreachable(
            f"cannot reach Redis at {where}: {reason}; {hint} set --redis-url or MCP_DB_REDIS_URL"
        )
    return AdminError(f"Redis at {where} answered with an error: {reason}")


class Deployment:
    """One deployment: a Redis (standalone or cluster) and the key prefix its nodes use."""

    def __init__(self, url: str, prefix: str, progress: Progress | None = None) -> None:
        self.layout = dict(_core.key_layout(prefix))  # ValueError for a bad prefix
        self.url = url
        self.prefix = prefix
        self.progress = progress or Progress()
        self.client, self.cluster = connect(url)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def where(self) -> str:
        return f"prefix {self.prefix!r} at {redact(self.url)}"

    # -- scanning ---------------------------------------------------------------------------

    def scan(self, kind: str) -> Iterator[tuple[str, str, str | None]]:
        """``(key, session or node, stream or None)`` of every key of ``kind``."""
        pattern = self.layout[kind]
        yield from self._scan(_glob_escape(self.prefix) + pattern[len(self.prefix) :], kind)

    def _scan(self, pattern: str, kind: str) -> Iterator[tuple[str, str, str | None]]:
        keys = self.client.scan_iter(match=pattern, count=BATCH)
        for raw in self.progress.count(f"{kind} keys", keys):
            key = text(raw)
            parsed = _core.parse_key(self.prefix, key)
            if parsed is not None and parsed[0] == kind:
                yield key, parsed[1], parsed[2]

    def streams_of(self, session: str) -> list[tuple[str, str]]:
        """``(stream, key)`` of each event stream of ``session``, by stream name."""
        # The stream is the last part of an events key (keys.rs), so every stream of the
        # session has the key of its empty-named stream as a prefix: SCAN for just those.
        start = _core.key_of(self.prefix, "events", session, "")
        found = [
            (stream or "", key)
            for key, owner, stream in self._scan(_glob_escape(start) + "*", "events")
            if owner == session
        ]
        return sorted(found)

    def now_ms(self, key: str | None = None) -> int:
        """Redis's clock (that of the node holding ``key`` on a cluster), in ms."""
        if self.cluster and key is not None:
            seconds, micros = self.client.time(target_nodes=self.client.get_node_from_key(key))
        else:
            seconds, micros = self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    # -- sessions ---------------------------------------------------------------------------

    def sessions(self, state: str | None = None) -> list[dict[str, Any]]:
        """Every session record (with ``state`` only, if given), newest update first."""
        streams = Counter(session for _, session, _ in self.scan("events"))
        now = self.now_ms()
        rows: list[dict[str, Any]] = []
        batch: list[tuple[str, str]] = []

        def flush() -> None:
            pipe = self.client.pipeline(transaction=False)
            for key, _ in batch:
                pipe.hmget(key, LIST_FIELDS)
                pipe.pttl(key)
            replies = pipe.execute()
            for i, (_, session) in enumerate(batch):
                values = dict(zip(LIST_FIELDS, map(text, replies[2 * i]), strict=True))
                if not values["state"]:
                    continue  # expired since the scan found it
                if state is not None and values["state"] != state:
                    continue
                created, updated = _int(values["created"]), _int(values["updated"])
                rows.append(
                    {
                        "id": session,
                        "state": values["state"],
                        "owner": values["owner"],
                        "epoch": _int(values["epoch"]),
                        "node": values["node"],
                        "created": created,
                        "updated": updated,
                        "created_age_ms": None if created is None else now - created,
                        "updated_age_ms": None if updated is None else now - updated,
                        "expires_in_ms": _int(replies[2 * i + 1]),
                        "streams": streams.get(session, 0),
                    }
                )
            batch.clear()

        for key, session, _ in self.scan("session"):
            batch.append((key, session))
            if len(batch) >= BATCH:
                flush()
        if batch:
            flush()
        rows.sort(key=lambda r: (r["updated"] or 0, r["id"]), reverse=True)
        return rows

    def _with_pttl(self, key: str, read: str) -> tuple[Any, Any]:
        """``key``'s value, read with the command ``read`` (``get``, ``hgetall``), and its
        PTTL, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        getattr(pipe, read)(key)
        pipe.pttl(key)
        value, pttl = pipe.execute()
        return value, pttl

    def node(self, node: str) -> dict[str, Any]:
        """A node's heartbeat: whether it lives, what it says, and how old it is."""
        key = _core.key_of(self.prefix, "node", node)
        value, pttl = self._with_pttl(key, "get")
        now = self.now_ms(key)
        info: dict[str, Any] = {"node": node, "alive": value is not None}
        if value is None:
            return info
        try:
            beat = json.loads(value)
        except ValueError:
            beat = {}
        if not isinstance(beat, dict):
            beat = {}
        info.update(pid=beat.get("pid"), host=beat.get("host"), ttl_ms=_int(pttl))
        if isinstance(beat.get("request_state"), dict):  # mcp 2.x nodes of mcp-db >= issue 13
            info["request_state"] = beat["request_state"]
        lease, sent = beat.get("lease"), beat.get("beat")
        info["lease_ms"] = lease
        if isinstance(lease, int) and isinstance(pttl, int) and pttl >= 0:
            # Redis set the key (with PX lease) lease - pttl ms ago, by its own clock; the
            # node wrote its own clock into the value just before: the difference is skew.
            age = lease - pttl
            info["age_ms"] = age
            if isinstance(sent, (int, float)):
                info["skew_ms"] = int(sent - (now - age))
        return info

    def session(self, session: str) -> dict[str, Any]:
        """A session's record, its owner's heartbeat and its event streams."""
        key = _core.key_of(self.prefix, "session", session)
        raw, pttl = self._with_pttl(key, "hgetall")
        streams = self.streams_of(session)
        if not raw and not streams:
            raise NotFound(
                f"no session {session!r} under {self.where}: it never existed, expired, or "
                "lives under another prefix; see `mcp-db sessions list` (and --prefix)"
            )
        now = self.now_ms(key)
        record: dict[str, Any] = {text(k): text(v) for k, v in raw.items()}
        out: dict[str, Any] = {"id": session, "record": record or None}
        if record:
            for field in ("version", "epoch", "created", "updated"):
                if _int(record.get(field)) is not None:
                    record[field] = _int(record[field])
            try:
                record["init"] = json.loads(record.get("init") or "null")
            except ValueError:
                pass
            created, updated = record.get("created"), record.get("updated")
            out["expires_in_ms"] = _int(pttl)
            out["created_age_ms"] = now - created if isinstance(created, int) else None
            out["updated_age_ms"] = now - updated if isinstance(updated, int) else None
            out["owner"] = self.node(record["owner"]) if record.get("owner") else None
        out["streams"] = self._stream_info(streams)
        return out

    def _stream_info(self, streams: list[tuple[str, str]]) -> list[dict[str, Any]]:
        pipe = self.client.pipeline(transaction=False)
        for _, key in streams:
            pipe.xlen(key)
            pipe.xrevrange(key, count=1)
            pipe.pttl(key)
        replies = pipe.execute()
        out = []
        for i, (stream, key) in enumerate(streams):
            length, last, pttl = replies[3 * i : 3 * i + 3]
            out.append(
                {
                    "stream": stream,
                    "key": key,
                    "events": int(length),
                    "last_id": text(last[0][0]) if last else None,
                    "expires_in_ms": _int(pttl),
                }
            )
        return out

    def close_session(self, session: str) -> dict[str, Any]:
        """Closes ``session`` as a DELETE does: a CLOSED tombstone through the core's
        transition script, then ``closed <session>`` on the bus so its owner lets go."""
        key = _core.key_of(self.prefix, "session", session)
        pttl = _int(self.client.pttl(key)) or -1
        ttl_ms = max(pttl, MIN_TOMBSTONE_MS)
        try:
            done, notified = asyncio.run(self._close(session, ttl_ms))
        except McpDbError as exc:
            raise Unreachable(f"cannot close session {session!r}: {exc}") from None
        if done.refusal == Refusal.MISSING:
            raise NotFound(
                f"no session {session!r} under {self.where}: it never existed or expired "
                "(an expired session already gets 404 everywhere)"
            )
        already = not done.done
        if already and done.state != "CLOSED":  # cannot happen without epoch or version
            raise AdminError(f"Redis refused to close session {session!r}: {done.refusal!r}")
        return {
            "id": session,
            "state": "CLOSED",
            "already_closed": already,
            "version": done.version,
            "tombstone_ttl_ms": ttl_ms,
            "notified_nodes": notified,
        }

    async def _close(self, session: str, ttl_ms: int) -> tuple[Transition, int]:
        """The CLOSED transition, then the news on the bus, as the middleware's DELETE
        does: again for a closed session too, as a close cut short may not have told the
        owner."""
        deployment = _core.Deployment(self.url, prefix=self.prefix)
        done = await deployment.sessions().transition(session, "CLOSED", ttl_ms)
        if done.refusal == Refusal.MISSING:
            return done, 0
        return done, await deployment.bus().closed(session)
