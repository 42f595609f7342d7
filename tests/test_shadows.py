"""The pure shadow-build state machine: LEGAL table, liveness, switch, rollback, validation.

No store, no broker, no clock: every rule gets ``now`` from these tests.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from itertools import product

import pytest

from indexgate import shadows
from indexgate.errors import InvalidRequest, InvalidTransition, StaleFencingToken
from indexgate.rules import Policy, Transition
from indexgate.shadows import LEGAL, BuildRequest, LocationFacts
from indexgate.schemas.records import AuditKind
from indexgate.schemas.shadows import IndexPointer, IndexState, ShadowBuild
from indexgate.schemas.shadows import ShadowState as S

T0 = datetime(2025, 6, 26, 10, 0, tzinfo=timezone.utc)
POLICY = Policy(default_heartbeat_interval_s=10, missed_heartbeats=3)  # a silent build dies after 30 s
CLAIM_S = 6.0
GOOD = LocationFacts(exists=True, integrity_ok=True, detail="1 file(s) match manifest.json")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def fresh() -> IndexState:
    return IndexState(branch="feature/x", index_type="SEARCH_INDEX")


def request(sid: str = "shadow-1", job: str = "job-1", event_time: datetime | None = None) -> BuildRequest:
    return BuildRequest(shadow_index_id=sid, job_id=job, index_type="SEARCH_INDEX",
                        resource_types=("object_type",), holder="funnel", event_time=event_time)


def registered(state: IndexState | None = None, sid: str = "shadow-1", now: datetime = T0) -> IndexState:
    return shadows.register(state or fresh(), request(sid, f"job-{sid}"), now, POLICY).state


def built(state: IndexState | None = None, sid: str = "shadow-1", records: int | None = 100, size: int | None = 1000,
          now: datetime = T0) -> IndexState:
    state = registered(state, sid, now)
    return shadows.complete(state, sid, now, POLICY, record_count=records, index_size_bytes=size,
                            location=f"/idx/{sid}").state


def switched(state: IndexState, sid: str, token: int, now: datetime = T0, keep_backup: bool = True) -> IndexState:
    state = shadows.claim_switch(state, sid, now, POLICY, CLAIM_S).state
    return shadows.swap(state, sid, token, now, keep_backup=keep_backup).state


def kinds(t: Transition) -> list[AuditKind]:
    return [e.kind for e in t.audit]


def build_in(state: S) -> tuple[Transition, ShadowBuild]:
    build = ShadowBuild(shadow_index_id="s", job_id="j", branch="b", index_type="SEARCH_INDEX", holder="h",
                        created_at=T0, last_heartbeat=T0, heartbeat_interval_s=10, state=state)
    t = Transition(IndexState(branch="b", index_type="SEARCH_INDEX", builds=[build]))
    return t, build


# --- the LEGAL table ------------------------------------------------------------------

ILLEGAL = [(a, b) for a, b in product(S, S) if b not in LEGAL[a]]
ALLOWED = [(a, b) for a in S for b in LEGAL[a]]


def test_every_state_has_a_row_and_terminal_states_go_nowhere() -> None:
    assert set(LEGAL) == set(S)
    assert LEGAL[S.FAILED] == frozenset() and LEGAL[S.CANCELLED] == frozenset()
    assert len(ILLEGAL) + len(ALLOWED) == len(S) ** 2


@pytest.mark.parametrize(("src", "dst"), ILLEGAL, ids=[f"{a}->{b}" for a, b in ILLEGAL])
def test_illegal_transition_raises(src: S, dst: S) -> None:
    t, build = build_in(src)
    with pytest.raises(InvalidTransition, match=f"{src} -> {dst}"):
        shadows._move(t, build, dst, T0, "test", "tester")
    assert build.state is src and t.audit == []


@pytest.mark.parametrize(("src", "dst"), ALLOWED, ids=[f"{a}->{b}" for a, b in ALLOWED])
def test_legal_transition_moves_and_records_from_to(src: S, dst: S) -> None:
    t, build = build_in(src)
    shadows._move(t, build, dst, T0, "test", "tester")
    assert build.state is dst
    assert kinds(t) == [AuditKind.SHADOW_STATE]
    assert {"from": str(src), "to": str(dst)}.items() <= t.audit[0].detail.items()


@pytest.mark.parametrize("src", [s for s in S if s is not S.BUILT and s is not S.SWITCHING])
def test_claim_switch_only_from_built(src: S) -> None:
    t, _ = build_in(src)
    with pytest.raises(InvalidTransition, match="not BUILT"):
        shadows.claim_switch(t.state, "s", T0, POLICY, CLAIM_S)


@pytest.mark.parametrize("src", [s for s in S if s is not S.SWITCHING])
def test_swap_only_from_switching(src: S) -> None:
    t, _ = build_in(src)
    with pytest.raises(InvalidTransition, match="only a SWITCHING build"):
        shadows.swap(t.state, "s", 1, T0)


def test_live_switch_claim_cannot_be_claimed_twice() -> None:
    state = shadows.claim_switch(built(), "shadow-1", T0, POLICY, CLAIM_S).state
    with pytest.raises(InvalidTransition, match="SWITCHING"):
        shadows.claim_switch(state, "shadow-1", at(1), POLICY, CLAIM_S)


# --- register -------------------------------------------------------------------------


def test_register_starts_preparing_without_any_lock() -> None:
    t = shadows.register(fresh(), request(), T0, POLICY)
    build = t.state.build("shadow-1")
    assert build.state is S.PREPARING and build.job_id == "job-1" and build.heartbeat_interval_s == 10
    assert t.state.build("job-1") is build
    assert kinds(t) == [AuditKind.SHADOW_STATE] and t.changed


@pytest.mark.parametrize("first_state", [S.PREPARING, S.BUILDING, S.BUILT, S.SWITCHING])
def test_register_refuses_second_build_while_one_is_in_flight(first_state: S) -> None:
    state = registered()
    state.builds[0].state = first_state
    t = shadows.register(state, request("shadow-2", "job-2"), at(1), POLICY)
    assert kinds(t) == [AuditKind.SHADOW_REFUSED] and not t.changed
    assert t.audit[0].detail["in_flight"] == "shadow-1" and t.audit[0].job_id == "job-2"
    assert t.state.build("shadow-2") is None


@pytest.mark.parametrize("how", ["failed", "cancelled", "active"])
def test_register_allows_a_new_build_after_the_first_ended(how: str) -> None:
    state = built()
    if how == "active":
        state = switched(state, "shadow-1", 1)
    else:
        to = S.FAILED if how == "failed" else S.CANCELLED
        state = shadows.end(state, "shadow-1", to, how, "op", T0, POLICY).state
    t = shadows.register(state, request("shadow-2", "job-2"), at(1), POLICY)
    assert t.state.build("shadow-2").state is S.PREPARING
    assert AuditKind.SHADOW_REFUSED not in kinds(t)


def test_register_allows_a_new_build_once_the_first_silently_died() -> None:
    t = shadows.register(registered(), request("shadow-2", "job-2"), at(30), POLICY)
    assert t.state.build("shadow-2") is not None


def test_register_of_a_known_id_is_ignored() -> None:
    t = shadows.register(registered(), request(), at(1), POLICY)
    assert kinds(t) == [AuditKind.IGNORED] and len(t.state.builds) == 1


# --- liveness -------------------------------------------------------------------------


def test_silent_build_is_failed_exactly_at_its_deadline_and_sweep_records_it() -> None:
    state = shadows.progress(registered(), "shadow-1", at(5), POLICY, percent=10, record_count=None, eta_s=None,
                             event_time=None).state
    build = state.build("shadow-1")
    deadline = at(5 + 30)
    assert shadows.heartbeat_deadline(build, POLICY) == deadline
    assert shadows.effective_state(build, deadline - timedelta(milliseconds=1), POLICY) is S.BUILDING
    assert shadows.effective_state(build, deadline, POLICY) is S.FAILED
    assert build.state is S.BUILDING  # nothing stored changed yet

    assert kinds(shadows.sweep(state, deadline - timedelta(milliseconds=1), POLICY)) == []
    t = shadows.sweep(state, deadline, POLICY)
    swept = t.state.build("shadow-1")
    assert swept.state is S.FAILED and swept.failure_reason == "HEARTBEAT_MISSED"
    assert t.audit[0].actor == "indexgate-sweeper" and t.audit[0].detail["to"] == "FAILED"


def test_progress_moves_preparing_to_building_and_updates_counters() -> None:
    prompt_start = shadows.register(fresh(), request("shadow-1", "job-shadow-1", event_time=T0), T0, POLICY).state
    t = shadows.progress(prompt_start, "shadow-1", at(5), POLICY, percent=40.0, record_count=4000, eta_s=12.0,
                         event_time=at(4))
    build = t.state.build("shadow-1")
    assert build.state is S.BUILDING
    assert (build.build_progress_percent, build.record_count, build.estimated_remaining_s) == (40.0, 4000, 12.0)
    # the start arrived at once, so the funnel's clock is right: the heartbeat counts when it was sent
    assert build.last_heartbeat == at(4) and build.last_event_time == at(4)
    assert build.clock.offset_s == 0 and build.clock.last_offset_s == -1
    t2 = shadows.progress(t.state, "shadow-1", at(6), POLICY, percent=None, record_count=None, eta_s=None,
                          event_time=None)
    assert t2.state.build("shadow-1").build_progress_percent == 40.0 and t2.state.build("shadow-1").record_count == 4000
    assert t2.changed and kinds(t2) == []  # a plain heartbeat is saved, not audited


def test_stale_heartbeat_is_ignored() -> None:
    state = shadows.progress(registered(), "shadow-1", at(10), POLICY, percent=50, record_count=500, eta_s=None,
                             event_time=at(10)).state
    t = shadows.progress(state, "shadow-1", at(11), POLICY, percent=20, record_count=200, eta_s=None,
                         event_time=at(9))
    assert kinds(t) == [AuditKind.IGNORED] and "stale" in t.audit[0].reason
    assert t.state.build("shadow-1").build_progress_percent == 50 and t.state.build("shadow-1").record_count == 500


def test_heartbeat_after_the_deadline_records_the_failure() -> None:
    t = shadows.progress(registered(), "shadow-1", at(30), POLICY, percent=90, record_count=1, eta_s=None,
                         event_time=None)
    assert t.state.build("shadow-1").state is S.FAILED
    assert t.state.build("shadow-1").build_progress_percent == 0.0


def test_complete_makes_built_with_counts_and_location() -> None:
    t = shadows.complete(registered(), "shadow-1", at(3), POLICY, record_count=10_000, index_size_bytes=52_428_800,
                         location="/idx/s1")
    build = t.state.build("shadow-1")
    assert build.state is S.BUILT and build.switch_ready
    assert (build.record_count, build.index_size_bytes, build.location) == (10_000, 52_428_800, "/idx/s1")
    assert build.completed_at == at(3) and build.build_progress_percent == 100.0


def test_completion_of_a_dead_build_is_ignored() -> None:
    t = shadows.complete(registered(), "shadow-1", at(31), POLICY, record_count=1, index_size_bytes=1, location="x")
    assert kinds(t) == [AuditKind.IGNORED] and t.state.build("shadow-1").location is None


# --- claim, swap, undo, rollback --------------------------------------------------------


def test_abandoned_claim_reads_as_built_and_can_be_claimed_again() -> None:
    state = shadows.claim_switch(built(), "shadow-1", T0, POLICY, CLAIM_S).state
    build = state.build("shadow-1")
    assert build.switch_claim_expires_at == at(CLAIM_S)
    assert shadows.effective_state(build, at(CLAIM_S) - timedelta(milliseconds=1), POLICY) is S.SWITCHING
    assert shadows.effective_state(build, at(CLAIM_S), POLICY) is S.BUILT
    again = shadows.claim_switch(state, "shadow-1", at(CLAIM_S), POLICY, CLAIM_S).state.build("shadow-1")
    assert again.state is S.SWITCHING and again.switch_claim_expires_at == at(2 * CLAIM_S)
    swept = shadows.sweep(state, at(CLAIM_S), POLICY).state.build("shadow-1")
    assert swept.state is S.BUILT


def test_swap_moves_pointer_keeps_backup_and_retires_old_active() -> None:
    state = switched(built(), "shadow-1", 3)
    state = built(state, "shadow-2", now=at(1))
    t = shadows.swap(shadows.claim_switch(state, "shadow-2", at(2), POLICY, CLAIM_S).state, "shadow-2", 5, at(2))
    assert t.state.active.shadow_index_id == "shadow-2" and t.state.active.fencing_token == 5
    assert t.state.active.location == "/idx/shadow-2" and t.state.pointer_token == 5
    assert [b.shadow_index_id for b in t.state.backups] == ["shadow-1"]
    assert t.state.build("shadow-1").state is S.CLEANUP and t.state.build("shadow-2").state is S.ACTIVE
    assert t.state.build("shadow-2").switch_fencing_token == 5


def test_swap_without_backup_keeps_none() -> None:
    state = built(switched(built(), "shadow-1", 3), "shadow-2", now=at(1))
    state = switched(state, "shadow-2", 4, at(2), keep_backup=False)
    assert state.backups == [] and state.active.shadow_index_id == "shadow-2"
    assert state.build("shadow-1").state is S.CLEANUP


@pytest.mark.parametrize("token", [2, 3])
def test_swap_refuses_token_not_newer_than_pointer(token: int) -> None:
    state = built(switched(built(), "shadow-1", 3), "shadow-2", now=at(1))
    claimed = shadows.claim_switch(state, "shadow-2", at(2), POLICY, CLAIM_S).state
    with pytest.raises(StaleFencingToken):
        shadows.swap(claimed, "shadow-2", token, at(2))


def test_backups_are_capped() -> None:
    state = fresh()
    for n in range(1, 6):
        state = switched(built(state, f"shadow-{n}", now=at(n)), f"shadow-{n}", n, at(n))
    assert [b.shadow_index_id for b in state.backups] == ["shadow-2", "shadow-3", "shadow-4"]


def test_undo_swap_restores_the_backup_and_fails_the_build() -> None:
    state = built(switched(built(), "shadow-1", 3), "shadow-2", now=at(1))
    state = switched(state, "shadow-2", 4, at(2))
    t = shadows.undo_swap(state, "shadow-2", "not reachable", at(3))
    assert t.state.active.shadow_index_id == "shadow-1" and t.state.backups == []
    assert t.state.build("shadow-1").state is S.ACTIVE
    failed = t.state.build("shadow-2")
    assert failed.state is S.FAILED and failed.failure_reason == "not reachable"
    assert kinds(t)[-1] is AuditKind.ROLLED_BACK


def test_undo_swap_without_backup_keeps_the_old_index_active() -> None:
    state = built(switched(built(), "shadow-1", 3), "shadow-2", now=at(1))
    state = switched(state, "shadow-2", 4, at(2), keep_backup=False)
    t = shadows.undo_swap(state, "shadow-2", "not reachable", at(3))
    assert t.state.active is not None and t.state.active.shadow_index_id == "shadow-1"


def test_rollback_reactivates_newest_backup_with_new_token() -> None:
    state = built(switched(built(), "shadow-1", 3), "shadow-2", now=at(1))
    state = switched(state, "shadow-2", 4, at(2))
    t = shadows.rollback(state, 7, "ops", "bad results", at(3))
    assert t.state.active.shadow_index_id == "shadow-1"
    assert t.state.active.fencing_token == 7 and t.state.pointer_token == 7 and t.state.active.switched_at == at(3)
    assert t.state.build("shadow-1").state is S.ACTIVE and t.state.build("shadow-2").state is S.CLEANUP
    assert kinds(t)[-1] is AuditKind.ROLLED_BACK and t.audit[-1].actor == "ops"
    with pytest.raises(StaleFencingToken):
        shadows.rollback(state, 4, "ops", "stale", at(3))


def test_rollback_refuses_without_backups() -> None:
    state = switched(built(), "shadow-1", 3)
    with pytest.raises(InvalidRequest, match="no backup"):
        shadows.rollback(state, 9, "ops", "why", at(1))


def test_record_switch_notes_durations() -> None:
    state = switched(built(), "shadow-1", 3)
    t = shadows.record_switch(state, "shadow-1", 12.34567, 1.5, at(1))
    build = t.state.build("shadow-1")
    assert (build.switch_duration_ms, build.blackout_ms) == (12.346, 1.5)
    assert kinds(t) == [AuditKind.SWITCHED] and t.audit[0].detail["fencing_token"] == 3


# --- validation -----------------------------------------------------------------------


def check(build_state: IndexState, name: str, active: IndexPointer | None = None,
          facts: LocationFacts = GOOD, max_shrink: float = 0.5) -> shadows.CheckResult:
    [result] = shadows.validate(build_state.build("shadow-1"), active, facts, [name], max_shrink)
    assert result.check == name
    return result


def pointer(size: int | None) -> IndexPointer:
    return IndexPointer(shadow_index_id="old", location="/idx/old", switched_at=T0, fencing_token=1,
                        record_count=10, index_size_bytes=size)


@pytest.mark.parametrize(("records", "passed"), [(0, False), (None, False), (1, True), (10_000, True)])
def test_record_count_check(records: int | None, passed: bool) -> None:
    assert check(built(records=records), "RECORD_COUNT_VALIDATION").passed is passed


@pytest.mark.parametrize(("new", "old", "passed"), [
    (400, 1000, False), (499, 1000, False), (500, 1000, True), (2000, 1000, True), (None, 1000, False),
    (10, None, True), (10, 0, True),
])
def test_size_comparison_check(new: int | None, old: int | None, passed: bool) -> None:
    assert check(built(size=new), "SIZE_COMPARISON", active=pointer(old)).passed is passed


def test_size_comparison_passes_without_active_index() -> None:
    result = check(built(size=1), "SIZE_COMPARISON", active=None)
    assert result.passed and "no active index" in result.detail


@pytest.mark.parametrize(("facts", "passed"), [
    (GOOD, True),
    (LocationFacts(True, False, "records.jsonl does not match its checksum"), False),
    (LocationFacts(False, False, "/idx does not exist"), False),
])
def test_integrity_check_follows_location_facts(facts: LocationFacts, passed: bool) -> None:
    result = check(built(), "INTEGRITY_CHECK", facts=facts)
    assert result.passed is passed and result.detail == facts.detail


def test_unknown_check_fails() -> None:
    result = check(built(), "VIBES_CHECK")
    assert not result.passed and "unknown check" in result.detail


def test_all_checks_in_order() -> None:
    results = shadows.validate(built().build("shadow-1"), None, GOOD, shadows.CHECKS, 0.5)
    assert [r.check for r in results] == list(shadows.CHECKS) and all(r.passed for r in results)


# --- purity ---------------------------------------------------------------------------


def _rules(state: IndexState):
    yield lambda: shadows.register(state, request("shadow-9", "job-9"), at(1), POLICY)
    yield lambda: shadows.progress(state, "shadow-2", at(1), POLICY, percent=5, record_count=5, eta_s=1,
                                   event_time=at(1))
    yield lambda: shadows.complete(state, "shadow-2", at(1), POLICY, record_count=3, index_size_bytes=3, location="l")
    yield lambda: shadows.end(state, "shadow-2", S.CANCELLED, "why", "op", at(1), POLICY)
    yield lambda: shadows.sweep(state, at(100), POLICY)
    yield lambda: shadows.rollback(state, 9, "op", "why", at(1))
    yield lambda: shadows.record_switch(state, "shadow-1", 1.0, 1.0, at(1))
    yield lambda: shadows.unclaim(state, "shadow-2", "why", at(1))


def test_rules_never_mutate_their_input() -> None:
    live = switched(built(sid="shadow-0"), "shadow-0", 1)
    live = switched(built(live, "shadow-1", now=at(0)), "shadow-1", 2)  # shadow-0 is now the backup
    state = registered(live, "shadow-2")
    before = state.model_dump()
    for rule in _rules(state):
        assert rule().state is not state
        assert state.model_dump() == before
    claimable = built(live, "shadow-3")
    snapshot = claimable.model_dump()
    claimed = shadows.claim_switch(claimable, "shadow-3", T0, POLICY, CLAIM_S).state
    assert claimable.model_dump() == snapshot
    claimed_snapshot = claimed.model_dump()
    swapped = shadows.swap(claimed, "shadow-3", 5, T0).state
    swapped_snapshot = swapped.model_dump()
    shadows.undo_swap(swapped, "shadow-3", "why", T0)
    assert claimed.model_dump() == claimed_snapshot and swapped.model_dump() == swapped_snapshot
