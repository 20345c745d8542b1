"""``mcp-db``: inspect and operate a deployment of mcp-db from the command line.

    mcp-db [--redis-url URL] [--prefix P] [--json] COMMAND

    sessions list [--state STATE] [--limit N]   the session records
    sessions show SESSION                       one record, its owner, its event streams
    sessions close SESSION                      close it as a DELETE would
    events tail SESSION [--stream S] [--follow] its stored events, then new ones
    doctor                                      check Redis and the nodes

Exit codes: 0 ok, 1 doctor found a failing check (or Redis answered with an error), 2 bad
usage, 3 not found, 4 Redis unreachable or refused, 130 interrupted. docs/cli.md has more.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import redis

from mcp_db import _core
from mcp_db._admin import (
    AdminError,
    Deployment,
    NotFound,
    unreachable,
)
from mcp_db._core import redact
from mcp_db._report import Progress, ago, plural

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "mcp"
STATES = ("INITIALIZING", "INITIALIZED", "ACTIVE", "CLOSED")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_UNREACHABLE = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _state(text: str) -> str:
    if text.upper() not in STATES:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(STATES)}")
    return text.upper()


def parser() -> argparse.ArgumentParser:
    # The common options go on every subcommand too, so `mcp-db sessions list --json`
    # works as well as `mcp-db --json sessions list`. SUPPRESS keeps a subcommand's
    # absent option from overwriting the value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--redis-url",
        default=argparse.SUPPRESS,
        help=f"the deployment's Redis (env MCP_DB_REDIS_URL, default {DEFAULT_URL}); "
        "rediss:// for TLS, redis://user:password@host:port/db for AUTH",
    )
    common.add_argument(
        "--prefix",
        default=argparse.SUPPRESS,
        help=f"the key prefix the nodes use (env MCP_DB_PREFIX, default {DEFAULT_PREFIX!r})",
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="machine-readable JSON on stdout",
    )
    top = argparse.ArgumentParser(
        prog="mcp-db",
        parents=[common],
        description="Inspect and operate an mcp-db deployment: sessions, events, nodes.",
        epilog="exit codes: 0 ok, 1 a check failed, 2 bad usage, 3 not found, "
        "4 Redis unreachable or refused, 130 interrupted",
    )
    top.add_argument("--version", action="version", version=f"mcp-db {_core.__version__}")
    commands = top.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sessions = commands.add_parser("sessions", help="list, show or close sessions")
    sessions_of = sessions.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = sessions_of.add_parser("list", parents=[common], help="the session records")
    listing.add_argument("--state", type=_state, help=f"only this state ({', '.join(STATES)})")
    listing.add_argument("--limit", type=_positive, help="at most N sessions, latest first")
    listing.set_defaults(run=_sessions_list)
    show = sessions_of.add_parser("show", parents=[common], help="one session in full")
    show.add_argument("session", metavar="SESSION")
    show.set_defaults(run=_sessions_show)
    close = sessions_of.add_parser(
        "close", parents=[common], help="close a session as DELETE does: 404 on every node"
    )
    close.add_argument("session", metavar="SESSION")
    close.set_defaults(run=_sessions_close)

    events = commands.add_parser("events", help="a session's events")
    events_of = events.add_subparsers(dest="action", metavar="ACTION", required=True)
    tail = events_of.add_parser("tail", parents=[common], help="print a session's events")
    tail.add_argument("session", metavar="SESSION")
    tail.add_argument("--stream", metavar="S", help="only this stream (a request id, _GET_stream)")
    tail.add_argument(
        "--follow", "-f", action="store_true", help="then wait for new events until Ctrl-C"
    )
    tail.set_defaults(run=_events_tail)

    doctor = commands.add_parser(
        "doctor", parents=[common], help="check Redis, the key space and the nodes"
    )
    doctor.set_defaults(run=_doctor)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    top = parser()
    args = top.parse_args(argv)
    args.redis_url = getattr(args, "redis_url", None) or os.environ.get(
        "MCP_DB_REDIS_URL", DEFAULT_URL
    )
    args.prefix = getattr(args, "prefix", None) or os.environ.get("MCP_DB_PREFIX", DEFAULT_PREFIX)
    args.json = getattr(args, "json", False)
    try:
        _core.key_layout(args.prefix)
    except ValueError as exc:
        top.error(f"--prefix: {exc}")
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except AdminError as exc:
        return _fail(exc)
    except redis.RedisError as exc:
        return _fail(unreachable(exc, args.redis_url))
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `mcp-db events tail ... | head`: the reader has all it wants
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


def _fail(exc: AdminError) -> int:
    sys.stdout.flush()  # what was printed comes first, also when both go to one file
    print(f"mcp-db: {exc}", file=sys.stderr)
    return exc.exit_code


def _deployment(args: argparse.Namespace) -> Deployment:
    return Deployment(args.redis_url, args.prefix, Progress())


def _emit(document: Any) -> None:
    print(json.dumps(document, indent=2))


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


# -- sessions -------------------------------------------------------------------------------


def _sessions_list(args: argparse.Namespace) -> int:
    with _deployment(args) as dep:
        rows = dep.sessions(args.state)
    shown = rows[: args.limit] if args.limit else rows
    if args.json:
        _emit({"prefix": args.prefix, "total": len(rows), "sessions": shown})
    elif shown:
        table = [("SESSION", "STATE", "OWNER", "EPOCH", "CREATED", "UPDATED", "STREAMS")]
        for r in shown:
            table.append(
                (
                    r["id"],
                    r["state"],
                    r["owner"] or "-",
                    str(r["epoch"] if r["epoch"] is not None else "-"),
                    ago(r["created_age_ms"]) + " ago",
                    ago(r["updated_age_ms"]) + " ago",
                    str(r["streams"]),
                )
            )
        print("\n".join(_table(table)))
        states = Counter(r["state"] for r in rows)
        summary = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        more = (
            f"; showing the {len(shown)} updated last (--limit)" if len(shown) < len(rows) else ""
        )
        print(f"{plural(len(rows), 'session')} ({summary}){more}")
    if not rows:
        which = f"{args.state} sessions" if args.state else "sessions"
        print(
            f"mcp-db: no {which} under {dep.where}; the nodes write under the prefix of their "
            f"RedisEventStore (default {DEFAULT_PREFIX!r}): check --prefix or MCP_DB_PREFIX",
            file=sys.stderr,
        )
    return EXIT_OK


def _sessions_show(args: argparse.Namespace) -> int:
    with _deployment(args) as dep:
        found = dep.session(args.session)
    if args.json:
        _emit(found)
        return EXIT_OK
    record = found["record"]
    lines = [f"session   {found['id']}"]
    if record is None:
        lines.append("record    none (expired or never written); its events remain")
    else:
        lines.append(f"state     {record.get('state')} (version {record.get('version')})")
        owner = found.get("owner")
        if owner is not None:
            if owner["alive"]:
                beat = f", beat {ago(owner['age_ms'])} ago" if "age_ms" in owner else ""
                health = f"heartbeat alive (pid {owner.get('pid')} on {owner.get('host')}{beat})"
            else:
                health = "heartbeat gone: the next node that gets a request takes it over"
            lines.append(f"owner     {owner['node']} at epoch {record.get('epoch')}, {health}")
        lines.append(
            f"created   {ago(found['created_age_ms'])} ago on {record.get('node') or '-'}; "
            f"updated {ago(found['updated_age_ms'])} ago"
        )
        lines.append(f"expires   {_expires(found.get('expires_in_ms'))}")
        init = record.get("init") if isinstance(record.get("init"), dict) else {}
        client = init.get("clientInfo") or {}
        name = " ".join(str(client[k]) for k in ("name", "version") if client.get(k)) or "-"
        lines.append(f"client    {name}, protocol {init.get('protocolVersion', '-')}")
        lines.append(f"principal {record.get('principal') or '(none)'}")
    streams = found["streams"]
    lines.append(f"streams   {len(streams)}")
    if streams:
        table = [("  STREAM", "EVENTS", "LAST ID", "EXPIRES")]
        for s in streams:
            expires = _expires(s["expires_in_ms"])
            table.append(("  " + s["stream"], str(s["events"]), s["last_id"] or "-", expires))
        lines += _table(table)
    print("\n".join(lines))
    return EXIT_OK


def _expires(ttl_ms: int | None) -> str:
    """``in <time>`` for a key's PTTL; ``never`` for one without a TTL (PTTL -1)."""
    return f"in {ago(ttl_ms)}" if ttl_ms is not None and ttl_ms >= 0 else "never"


def _sessions_close(args: argparse.Namespace) -> int:
    with _deployment(args) as dep:
        done = dep.close_session(args.session)
    if args.json:
        _emit(done)
    elif done["already_closed"]:
        print(f"session {args.session} was already closed; every node answers 404 for it")
    else:
        print(
            f"closed session {args.session}: every node answers 404 for it from now on "
            f"({plural(done['notified_nodes'], 'node')} told to let go)"
        )
    return EXIT_OK


# -- events ---------------------------------------------------------------------------------


def _events_tail(args: argparse.Namespace) -> int:
    with _deployment(args) as dep:
        return _tail(dep, args)


def _tail(dep: Deployment, args: argparse.Namespace) -> int:
    streams = dict(dep.streams_of(args.session))
    exists = bool(streams) or bool(
        dep.client.exists(_core.key_of(args.prefix, "session", args.session))
    )
    if not exists:
        raise NotFound(
            f"no session {args.session!r} under {dep.where}: it never existed, expired, or lives "
            "under another prefix; see `mcp-db sessions list` (and --prefix)"
        )
    if args.stream is not None:
        if args.stream in streams:
            streams = {args.stream: streams[args.stream]}
        elif args.follow:  # wait for it
            streams = {args.stream: _core.key_of(args.prefix, "events", args.session, args.stream)}
        else:
            raise NotFound(
                f"session {args.session} has no stream {args.stream!r}; its streams: "
                f"{', '.join(sorted(streams)) or 'none'}"
            )
    elif not streams and not args.follow:
        print(f"mcp-db: session {args.session} has no events", file=sys.stderr)
    from mcp_db import _tail

    events, last = _tail.stored(dep, args.session, streams)
    for event in events:
        _print_event(event, args.json)
    if args.follow:
        sys.stdout.flush()
        rescan = args.stream is None
        for event in _tail.follow(dep, args.session, streams, last, rescan):
            _print_event(event, args.json)
            sys.stdout.flush()
    return EXIT_OK


def _print_event(event: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(event, separators=(",", ":")))
        return
    message = event["message"]
    text = "-" if message is None else json.dumps(message, separators=(",", ":"))
    print(f"{event['id']}  {event['stream']}  {event['kind']}  {text}")


# -- doctor ---------------------------------------------------------------------------------


def _doctor(args: argparse.Namespace) -> int:
    from mcp_db import _doctor

    try:
        dep = _deployment(args)
    except AdminError as exc:
        if exc.exit_code != EXIT_UNREACHABLE:
            raise
        check = {"name": "redis reachable", "status": "FAIL", "detail": str(exc)}
        if args.json:
            _emit({"ok": False, "prefix": args.prefix, "checks": [check], "nodes": []})
        else:
            print(f"FAIL  redis reachable  {redact(args.redis_url)}")
        return _fail(exc)
    with dep:
        report = _doctor.run(dep)
    if args.json:
        _emit(report)
    else:
        print(f"mcp-db doctor: {dep.where}")
        print("\n".join(_doctor.render(report)))
    return EXIT_OK if report["ok"] else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
