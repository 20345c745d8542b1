"""The routing rules of SessionMiddleware (``middleware/routing.py``), the node's lease and
its ownership table: pure functions and plain objects, tested without Redis, a server or
an event loop. Each test pins one branch, so inverting its rule fails it."""

from __future__ import annotations

import random
from typing import Any

import pytest

from mcp_db._core import ClaimOutcome
from mcp_db.middleware import ownership as ownership_module
from mcp_db.middleware.node import Lease
from mcp_db.middleware.owner import call_ids
from mcp_db.middleware.ownership import Owned, Ownership
from mcp_db.middleware.routing import (
    CANNOT_CLOSE,
    CLAIMED_ELSEWHERE,
    GIVE_UP,
    HAND_OFF_CALM,
    NOT_FOUND_OTHER_PRINCIPAL,
    READ_RECORD,
    RELISTENING_FROM,
    SERVE_OWNED,
    SERVE_UNRECORDED,
    STORE_UNAVAILABLE,
    TAKE_OVER,
    AskRemembered,
    Claimed,
    Forward,
    NotFound,
    Record,
    RefuseMoved,
    Request,
    ServeAsOwner,
    WaitForOwner,
    after_claim,
    after_move,
    decide_at_once,
    decide_by_record,
    decide_without_record,
    hand_off_to,
    silent_owner,
)

NODE = "node-a"
OTHER = "node-b"
NOW = 1000.0
LEASE_S = 10.0
ALICE = '{"client_id":"alice"}'


def request(
    *, principal: str = "", relayed: bool = False, method: str = "POST", session: str = "s1"
) -> Request:
    scope: dict[str, Any] = {"type": "http", "method": method, "headers": []}
    return Request(scope, None, None, session, None, relayed, principal)  # type: ignore[arg-type]


def lease(*, gen: int = 3, until: float = NOW + 5) -> Lease:
    held = Lease(NODE, LEASE_S, idle_limit=9.0)
    held.gen, held.until = gen, until
    return held


def table(held: Lease | None = None) -> tuple[Ownership, list[tuple[str, int | None]]]:
    fences: list[tuple[str, int | None]] = []
    return Ownership(NODE, held or lease(), lambda s, e: fences.append((s, e))), fences


def owned(
    *, principal: str = "", gen: int = 3, last_used: float = NOW - 1, epoch: int = 2
) -> Owned:
    return Owned(epoch=epoch, principal=principal, gen=gen, last_used=last_used)


def record(
    *, state: str = "ACTIVE", principal: str = "", owner: str = NODE, epoch: int = 2
) -> Record:
    return Record(state=state, principal=principal, owner=owner, epoch=epoch, init="{}")


# -- decide_at_once: what the node decides from memory ------------------------------------


def at_once(
    req: Request | None = None, own: Owned | None = None, local: bool = True, **kw: Any
) -> Any:
    t, _ = table()
    if "hint" in kw:
        t.hints["s1"] = kw.pop("hint")
    return decide_at_once(req or request(), own, local, t, kw.pop("lease", lease()), NOW)


def test_an_owned_held_fresh_session_under_a_valid_lease_is_served_at_once() -> None:
    assert at_once(own=owned()) is SERVE_OWNED


def test_the_fast_path_refuses_another_principal() -> None:
    assert at_once(request(principal=ALICE), owned(principal="")) == NOT_FOUND_OTHER_PRINCIPAL
    assert at_once(request(principal=ALICE), owned(principal=ALICE)) is SERVE_OWNED


def test_a_session_whose_transport_is_not_here_is_looked_up() -> None:
    assert at_once(own=owned(), local=False) is READ_RECORD


def test_ownership_confirmed_under_an_older_lease_generation_is_looked_up() -> None:
    assert at_once(own=owned(gen=2)) is READ_RECORD


def test_a_lapsed_lease_makes_the_owner_look_the_session_up() -> None:
    assert at_once(own=owned(), lease=lease(until=NOW)) is READ_RECORD
    assert at_once(own=owned(), lease=lease(until=NOW + 0.001)) is SERVE_OWNED


def test_a_session_idle_past_the_limit_is_looked_up() -> None:
    assert at_once(own=owned(last_used=NOW - 9.0)) is READ_RECORD
    assert at_once(own=owned(last_used=NOW - 8.9)) is SERVE_OWNED


def test_a_remembered_owner_is_asked_without_reading_the_record() -> None:
    assert at_once(own=None, local=False, hint=OTHER) == AskRemembered(OTHER)


def test_a_relayed_request_never_follows_a_remembered_owner() -> None:
    assert at_once(request(relayed=True), None, False, hint=OTHER) is READ_RECORD


def test_a_remembered_owner_is_ignored_for_a_session_this_node_owns() -> None:
    assert at_once(own=owned(gen=0), local=False, hint=OTHER) is READ_RECORD


def test_without_a_remembered_owner_the_record_is_read() -> None:
    assert at_once(own=None, local=False) is READ_RECORD


# -- decide_by_record: what the record says ------------------------------------------------


def by_record(
    rec: Record | None,
    req: Request | None = None,
    *,
    held_before: bool = False,
    own: Owned | None = None,
    held: bool = False,
) -> Any:
    return decide_by_record(req or request(), rec, NODE, held_before, own, held)


def test_no_record_is_an_unknown_session_if_this_node_never_had_it() -> None:
    assert by_record(None) == NotFound("unknown", let_go=True)


def test_no_record_is_an_expired_session_if_this_node_had_it() -> None:
    assert by_record(None, held_before=True) == NotFound("expired", let_go=True)


def test_a_closed_record_is_not_found_and_let_go() -> None:
    assert by_record(record(state="CLOSED")) == NotFound("closed", let_go=True)
    # Closed wins over another principal.
    assert by_record(record(state="CLOSED", principal=ALICE)) == NotFound("closed", let_go=True)


def test_another_principal_is_not_found_and_the_session_is_kept() -> None:
    assert by_record(record(principal=ALICE)) == NotFound("other_principal", let_go=False)
    assert by_record(record(principal=ALICE), request(principal=ALICE)) == ServeAsOwner(2)


def test_a_record_naming_this_node_is_served_as_owner() -> None:
    assert by_record(record(owner=NODE, epoch=4)) == ServeAsOwner(4)


def test_a_claim_made_here_after_the_read_beats_the_stale_record() -> None:
    assert by_record(record(owner=OTHER, epoch=4), own=owned(epoch=4)) == ServeAsOwner(4)
    assert by_record(record(owner=OTHER, epoch=4), own=owned(epoch=5)) == ServeAsOwner(5)


def test_a_session_owned_elsewhere_at_a_higher_epoch_is_forwarded_and_let_go() -> None:
    found = by_record(record(owner=OTHER, epoch=4), own=owned(epoch=3), held=True)
    assert found == Forward(OTHER, 4, let_go=True)


def test_a_session_owned_elsewhere_and_not_held_is_forwarded_without_letting_go() -> None:
    assert by_record(record(owner=OTHER, epoch=4)) == Forward(OTHER, 4, let_go=False)
    assert by_record(record(owner=OTHER, epoch=4), held=True) == Forward(OTHER, 4, let_go=True)


def test_a_relayed_request_for_a_session_owned_elsewhere_is_refused_as_moved() -> None:
    found = by_record(record(owner=OTHER, epoch=4), request(relayed=True))
    assert found == RefuseMoved(OTHER, 4, let_go=False)


# -- decide_without_record: Redis cannot be read ------------------------------------------


def test_without_redis_a_session_not_held_here_is_unavailable() -> None:
    assert decide_without_record(request(), owned(), False) is STORE_UNAVAILABLE


def test_without_redis_another_principal_is_refused() -> None:
    found = decide_without_record(request(principal=ALICE), owned(principal=""), True)
    assert found == NOT_FOUND_OTHER_PRINCIPAL
    assert decide_without_record(request(principal=ALICE), None, True) is SERVE_UNRECORDED


def test_without_redis_a_delete_is_refused() -> None:
    assert decide_without_record(request(method="DELETE"), owned(), True) is CANNOT_CLOSE


def test_without_redis_a_session_held_here_is_served() -> None:
    assert decide_without_record(request(method="GET"), owned(), True) is SERVE_UNRECORDED


# -- forwarding: a moved session, a silent owner, a claim ---------------------------------


def test_after_a_move_a_missing_or_closed_record_is_not_found() -> None:
    assert after_move(None, NODE) == NotFound("expired")
    assert after_move(record(state="CLOSED", owner=OTHER), NODE) == NotFound("closed")


def test_after_a_move_to_this_node_it_serves_as_owner() -> None:
    assert after_move(record(owner=NODE, epoch=6), NODE) == ServeAsOwner(6)


def test_after_a_move_elsewhere_the_request_follows() -> None:
    assert after_move(record(owner=OTHER, epoch=6), NODE) == Forward(OTHER, 6)


def test_a_silent_owner_without_a_lease_is_taken_over() -> None:
    assert silent_owner(False, False, NOW, None, LEASE_S) is TAKE_OVER


def test_a_silent_owner_holding_its_lease_is_asked_again_until_the_lease_could_lapse() -> None:
    assert silent_owner(True, False, NOW, None, LEASE_S) == WaitForOwner(NOW + LEASE_S + 0.5)
    assert silent_owner(True, False, NOW + 1, NOW + 5, LEASE_S) == WaitForOwner(NOW + 5)


def test_a_silent_owner_that_keeps_its_lease_past_the_patience_gets_a_503() -> None:
    assert silent_owner(True, False, NOW + 5, NOW + 5, LEASE_S) is GIVE_UP


def test_while_this_node_recovers_a_missing_lease_is_no_evidence_of_death() -> None:
    assert silent_owner(False, True, NOW, None, LEASE_S) == WaitForOwner(NOW + LEASE_S + 0.5)
    # Past the patience, still recovering: wait on rather than give up.
    assert silent_owner(False, True, NOW + 5, NOW + 5, LEASE_S) == WaitForOwner(NOW + 5 + LEASE_S)


def test_a_claim_this_node_won_is_a_takeover() -> None:
    assert after_claim(ClaimOutcome.CLAIMED) == Claimed(took_over=True)


def test_a_claim_held_by_a_concurrent_request_here_is_no_new_takeover() -> None:
    assert after_claim(ClaimOutcome.HELD) == Claimed(took_over=False)


def test_a_claim_of_a_closed_or_missing_session_is_not_found() -> None:
    assert after_claim(ClaimOutcome.CLOSED) == NotFound("closed")
    assert after_claim(ClaimOutcome.MISSING) == NotFound("expired")


def test_a_claim_another_node_won_follows_the_session() -> None:
    assert after_claim(ClaimOutcome.MOVED) is CLAIMED_ELSEWHERE


# -- the lease ----------------------------------------------------------------------------


def test_the_lease_is_valid_until_ninety_percent_of_it_after_the_beat() -> None:
    held = Lease(NODE, LEASE_S, idle_limit=9.0)
    assert not held.valid(NOW)
    held.renewed(NOW, held=True)
    assert held.valid(NOW + 8.99) and not held.valid(NOW + 9.0)


def test_a_renewal_that_finds_the_key_gone_bumps_the_generation() -> None:
    held = Lease(NODE, LEASE_S, idle_limit=9.0)
    held.renewed(NOW, held=False)
    assert held.gen == 1
    held.renewed(NOW + 3, held=True)
    assert held.gen == 1


def test_a_node_that_never_lost_redis_is_not_recovering() -> None:
    assert not Lease(NODE, LEASE_S, idle_limit=9.0).recovering(NOW)


def test_a_node_recovers_for_one_lease_after_its_heartbeat_reaches_redis_again() -> None:
    held = Lease(NODE, LEASE_S, idle_limit=9.0)
    held.failed()
    assert held.recovering(NOW)  # Redis still lost
    held.reached(NOW)
    held.reached(NOW + 5)  # only the first beat after the outage counts
    assert held.recovering(NOW + LEASE_S - 0.01)
    assert not held.recovering(NOW + LEASE_S)


# -- the ownership table ------------------------------------------------------------------


def test_adopting_a_session_fences_its_appends_once_per_epoch() -> None:
    held = lease(gen=7)
    t, fences = table(held)
    t.hints["s1"] = OTHER
    first = t.adopt("s1", 1, ALICE)
    assert (first.epoch, first.principal, first.gen) == (1, ALICE, 7)
    assert "s1" not in t.hints
    held.gen = 8
    assert t.adopt("s1", 1, ALICE) is first and first.gen == 8
    assert t.adopt("s1", 2, ALICE) is not first
    assert fences == [("s1", 1), ("s1", 2)]
    t.disown("s1")
    t.disown("s1")
    assert fences[-1] == ("s1", None) and len(fences) == 3


def test_remembered_owners_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ownership_module, "MAX_OWNER_HINTS", 2)
    t, _ = table()
    for session in ("a", "b", "c"):
        t.note_owner(session, OTHER)
    assert list(t.hints) == ["b", "c"]
    t.note_owner("b", NODE)  # known: replaced, nothing evicted
    assert t.hints == {"b": NODE, "c": OTHER}


# -- hand-off: ownership follows the traffic -------------------------------------------------

THIRD = "node-c"
OLD_PROTOCOL = "2025-06-18"  # before clients listened again on their own


def held_here(**fields: Any) -> Owned:
    return Owned(epoch=1, principal="", gen=0, **fields)


def test_two_requests_in_a_row_relayed_from_one_node_hand_the_session_to_it() -> None:
    o = held_here()
    assert hand_off_to(o, OTHER, RELISTENING_FROM) is None, "one relay is no pattern"
    assert hand_off_to(o, OTHER, RELISTENING_FROM) == OTHER


def test_a_request_of_the_owners_own_client_or_another_node_breaks_the_streak() -> None:
    o = held_here()
    for arriving in (OTHER, None, OTHER, THIRD, OTHER, THIRD):
        assert hand_off_to(o, arriving, RELISTENING_FROM) is None, arriving


def test_a_call_in_flight_holds_the_session_until_it_ends() -> None:
    o = held_here(in_flight=1)
    assert hand_off_to(o, OTHER, RELISTENING_FROM) is None
    assert hand_off_to(o, OTHER, RELISTENING_FROM) is None, "the call still runs here"
    o.in_flight = 0
    assert hand_off_to(o, OTHER, RELISTENING_FROM) == OTHER, "the next request moves it"


def test_a_call_whose_stream_ended_holds_the_session_until_answered() -> None:
    o = held_here(unanswered={"7": float("inf")})
    assert hand_off_to(o, OTHER, RELISTENING_FROM) is None
    assert hand_off_to(o, OTHER, RELISTENING_FROM) is None, "the SDK still runs the call"
    del o.unanswered["7"]
    assert hand_off_to(o, OTHER, RELISTENING_FROM) == OTHER


def test_the_calls_of_a_post_are_its_json_rpc_requests_by_id() -> None:
    call = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{}}'
    assert call_ids(call) == ["7"], "named as the SDK names the call's stream"
    batch = b'[{"jsonrpc":"2.0","id":"a","method":"ping"},{"jsonrpc":"2.0","method":"x"},'
    batch += b'{"jsonrpc":"2.0","id":3,"result":{}}]'
    assert call_ids(batch) == ["a"], "not a notification, not a response"
    assert call_ids(b"{not json") == []
    assert call_ids(b'"a string"') == []


def test_an_open_get_stream_moves_only_if_its_client_listens_again() -> None:
    listening = held_here(in_flight=1, listening=1)
    hand_off_to(listening, OTHER, OLD_PROTOCOL)
    assert hand_off_to(listening, OTHER, OLD_PROTOCOL) is None
    assert hand_off_to(listening, OTHER, None) is None
    assert hand_off_to(listening, OTHER, RELISTENING_FROM) == OTHER
    calling = held_here(in_flight=2, listening=1)
    hand_off_to(calling, OTHER, RELISTENING_FROM)
    assert hand_off_to(calling, OTHER, RELISTENING_FROM) is None, "and a call runs too"


def test_a_session_handed_in_stays_for_its_calm_requests() -> None:
    o = held_here(calm=HAND_OFF_CALM)
    hand_off_to(o, None, RELISTENING_FROM)  # the request it was handed with, served here
    moves = [hand_off_to(o, OTHER, RELISTENING_FROM) for _ in range(HAND_OFF_CALM - 1)]
    assert moves[:-1] == [None] * (HAND_OFF_CALM - 2)
    assert moves[-1] == OTHER, "its 64th request may move it again"


def _simulate(
    requests: int, pick: Any, nodes: tuple[str, ...] = (NODE, OTHER, THIRD)
) -> tuple[int, int]:
    """One session: ``initialize`` on ``pick(0)``, then ``requests`` requests, the ``i``-th
    landing on ``pick(i)``. The owner runs ``hand_off_to`` on each request it serves; a
    hand-off makes the relaying node the owner (calm), which serves that request itself,
    as the middleware does. Returns (hand-offs, requests relayed and served elsewhere)."""
    owner, state = pick(0), held_here()
    moves = relayed = 0
    for i in range(1, requests + 1):
        lands = pick(i)
        relayed_from = None if lands == owner else lands
        to = hand_off_to(state, relayed_from, RELISTENING_FROM)
        if to is not None:
            moves += 1
            owner, state = to, held_here(calm=HAND_OFF_CALM)
            hand_off_to(state, None, RELISTENING_FROM)
        elif relayed_from is not None:
            relayed += 1
    return moves, relayed


def test_behind_round_robin_a_session_moves_at_most_once_in_40_requests() -> None:
    rng = random.Random(15)
    nodes = (NODE, OTHER, THIRD)
    moved = [_simulate(40, lambda _: rng.choice(nodes))[0] for _ in range(5000)]
    assert max(moved) == 1, "never twice"
    assert sum(moved) > 4500, "and most sessions do move once (the rule is not inert)"
    # Strict rotation, the other round robin: a session is never relayed twice in a row.
    assert _simulate(40, lambda i: nodes[i % 3]) == (0, 27)
    # A long session moves at most once per calm stretch.
    long_moves = [_simulate(640, lambda _: rng.choice(nodes))[0] for _ in range(500)]
    assert max(long_moves) <= 640 // HAND_OFF_CALM


def test_behind_a_hash_on_the_session_it_is_relayed_once_then_served_where_it_lands() -> None:
    # initialize carries no session ID, so it lands elsewhere; every later request lands on
    # the node the hash picks.
    moves, relayed = _simulate(40, lambda i: NODE if i == 0 else OTHER)
    assert (moves, relayed) == (1, 1)
