"""The pure lock rules (``indexgate.locks``): no store, no broker, no clock but ``now``."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from indexgate import locks, permissions
from indexgate.errors import InvalidRequest, LockNotFound
from indexgate.locks import AcquireRequest, HeartbeatUpdate, Policy
from indexgate.schemas.records import AuditKind, BranchState, Health, JobStatus, ReleaseReason
from tests.service_kit import POLICY, T0

MS = timedelta(milliseconds=1)
BRANCH = "feature/user-schema"
# interval 60 s, dead after 3 missed = 180 s; default TTL 1 h, max 2 h
HB_DEADLINE_S = 180
TTL = (ReleaseReason.TTL_EXPIRED,)
HEARTBEAT = (ReleaseReason.HEARTBEAT_MISSED,)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def req(job: str = "job-1", *types: str | None, holder: str = "funnel", **kw) -> AcquireRequest:
    return AcquireRequest(job_id=job, holder=holder, resource_types=tuple(types) or (None,), reason="rebuild", **kw)


def grant(state: BranchState, request: AcquireRequest, now: datetime = T0) -> BranchState:
    t = locks.acquire(state, request, now, POLICY)
    assert [e.kind for e in t.audit][-1] is AuditKind.ACQUIRED, t.audit
    return t.state


def held(*requests: AcquireRequest, now: datetime = T0) -> BranchState:
    state = BranchState(branch=BRANCH)
    for request in requests:
        state = grant(state, request, now)
    return state


def kinds(t: locks.Transition) -> list[AuditKind]:
    return [entry.kind for entry in t.audit]


def only_lock(state: BranchState):
    assert len(state.locks) == 1, state.locks
    return state.locks[0]


def allowed(state: BranchState | None, rt: str | None, now: datetime, action: str = "write") -> bool:
    return permissions.check(state, BRANCH, rt, action, now, POLICY).allowed


# --- conflicts ---------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b", "expected"), [(None, None, True), (None, "object_type", True), (
    "object_type", None, True), ("object_type", "object_type", True), ("object_type", "link_type", False)])
def test_conflict_rule(a, b, expected):
    assert locks.conflicts(a, b) is expected


def test_branch_wide_lock_blocks_every_type_and_a_typed_lock_blocks_branch_wide():
    state = held(req("job-1"))
    t = locks.acquire(state, req("job-2", "object_type"), T0, POLICY)
    assert kinds(t) == [AuditKind.REFUSED]
    assert not allowed(state, "link_type", T0)

    typed = held(req("job-1", "object_type"))
    assert kinds(locks.acquire(typed, req("job-2"), T0, POLICY)) == [AuditKind.REFUSED]
    assert not allowed(typed, None, T0)


def test_different_resource_types_coexist():
    state = held(req("job-1", "object_type"), req("job-2", "link_type"))
    assert {(lock.job_id, lock.resource_type) for lock in state.locks} == {
        ("job-1", "object_type"), ("job-2", "link_type")}
    assert allowed(state, "action_type", T0)
    assert not allowed(state, "object_type", T0) and not allowed(state, "link_type", T0)


# --- acquire ----------------------------------------------------------------------------


def test_acquire_grants_every_requested_type_to_one_active_job():
    t = locks.acquire(BranchState(branch=BRANCH), req("job-1", "object_type", "link_type"), T0, POLICY)
    assert kinds(t) == [AuditKind.ACQUIRED, AuditKind.ACQUIRED] and t.changed
    assert sorted(lock.resource_type for lock in t.state.locks) == ["link_type", "object_type"]
    lock = t.state.locks[0]
    assert lock.expires_at == at(3600) and lock.heartbeat_interval_s == 60 and lock.last_heartbeat == T0
    assert t.state.job("job-1").status is JobStatus.ACTIVE


def test_acquire_is_all_or_none_and_a_refusal_names_the_holder():
    state = held(req("job-1", "link_type", holder="builder-a"))
    t = locks.acquire(state, req("job-2", "object_type", "link_type", holder="builder-b"), T0, POLICY)
    assert kinds(t) == [AuditKind.REFUSED] and t.changed  # the REFUSED job record is saved
    assert [(lock.job_id, lock.resource_type) for lock in t.state.locks] == [("job-1", "link_type")]
    assert t.state.fence == state.fence  # no token spent on a refusal
    refusal = t.audit[0]
    assert "builder-a" in refusal.reason and refusal.job_id == "job-2"
    assert refusal.detail["held_by"][0]["job_id"] == "job-1"
    assert refusal.detail["held_by"][0]["holder"] == "builder-a"
    job = t.state.job("job-2")
    assert job.status is JobStatus.REFUSED and job.outcome == "refused"


@pytest.mark.parametrize("types", [("object_type", "object_type"), (None, "object_type")])
def test_a_request_never_holds_two_conflicting_locks(types):
    state = locks.acquire(BranchState(branch=BRANCH), req("job-1", *types), T0, POLICY).state
    pairs = [(a.resource_type, b.resource_type) for i, a in enumerate(state.locks) for b in state.locks[i + 1:]]
    assert state.locks and not any(locks.conflicts(a, b) for a, b in pairs)


def test_ttl_is_capped_at_max_ttl():
    lock = only_lock(held(req("job-1", ttl_s=10 * 86_400)))
    assert lock.expires_at == at(POLICY.max_ttl_s)


def test_fencing_tokens_strictly_increase_across_grants_releases_and_takeovers():
    tokens: list[int] = []
    state = held(req("job-1", "object_type", "link_type"))
    tokens += [lock.fencing_token for lock in state.locks]
    state = locks.release_job(state, "job-1", ReleaseReason.COMPLETED, "funnel", at(10), POLICY).state
    state = grant(state, req("job-2", "object_type"), at(20))
    tokens.append(only_lock(state).fencing_token)
    state = grant(state, req("job-3", "object_type"), at(20 + HB_DEADLINE_S))  # takeover of a dead lock
    tokens.append(only_lock(state).fencing_token)
    assert tokens == sorted(set(tokens)) and len(tokens) == 4
    assert state.fence == tokens[-1]


def test_same_job_acquiring_again_is_ignored():
    state = held(req("job-1", "object_type"))
    t = locks.acquire(state, req("job-1", "object_type"), at(5), POLICY)
    assert kinds(t) == [AuditKind.IGNORED] and not t.changed
    assert t.state.model_dump() == state.model_dump()


def test_late_duplicate_started_of_a_finished_job_does_not_reacquire():
    state = held(req("job-1", "object_type"))
    state = locks.release_job(state, "job-1", ReleaseReason.COMPLETED, "funnel", at(60), POLICY).state
    t = locks.acquire(state, req("job-1", "object_type"), at(61), POLICY)
    assert kinds(t) == [AuditKind.IGNORED] and "ENDED" in t.audit[0].reason
    assert t.state.locks == [] and not t.changed


# --- health and death -------------------------------------------------------------------


@pytest.mark.parametrize(("since", "expected"), [
    (0, Health.HEALTHY), (60, Health.HEALTHY), (60.001, Health.WARNING),
    (HB_DEADLINE_S - 0.001, Health.WARNING), (HB_DEADLINE_S, Health.CRITICAL), (HB_DEADLINE_S + 1, Health.CRITICAL),
])
def test_health_boundaries(since, expected):
    lock = only_lock(held(req()))
    assert locks.health(lock, at(since), POLICY) is expected


def test_critical_past_ttl_even_with_fresh_heartbeats():
    lock = only_lock(held(req(ttl_s=100)))
    lock = lock.model_copy(update={"last_heartbeat": at(99)})
    assert locks.health(lock, at(100) - MS, POLICY) is Health.HEALTHY
    assert locks.health(lock, at(100), POLICY) is Health.CRITICAL
    assert locks.death_reason(lock, at(100), POLICY) is ReleaseReason.TTL_EXPIRED


def test_death_is_exactly_at_the_heartbeat_deadline_without_any_sweep():
    state = held(req("job-1", "object_type"))
    deadline = at(HB_DEADLINE_S)
    assert locks.heartbeat_deadline(only_lock(state), POLICY) == deadline
    denied = permissions.check(state, BRANCH, "object_type", "write", deadline - MS, POLICY)
    assert not denied.allowed and denied.blocking_lock.death_reason is None
    assert allowed(state, "object_type", deadline)
    assert only_lock(state).job_id == "job-1"  # still stored: the check did not need a sweep


@pytest.mark.parametrize(("ttl_s", "now_s", "reason"), [
    (None, HB_DEADLINE_S, ReleaseReason.HEARTBEAT_MISSED),
    (100, 100, ReleaseReason.TTL_EXPIRED),
])
def test_a_dead_lock_is_taken_over_at_once(ttl_s, now_s, reason):
    state = held(req("job-1", "object_type", ttl_s=ttl_s))
    t = locks.acquire(state, req("job-2", "object_type"), at(now_s), POLICY)
    assert kinds(t) == [AuditKind.RELEASED, AuditKind.ACQUIRED]
    released, acquired = t.audit
    assert released.reason == str(reason) and released.job_id == "job-1"
    assert released.actor == locks.SWEEPER and released.detail["died_at"] == at(now_s).isoformat()
    assert acquired.job_id == "job-2" and only_lock(t.state).job_id == "job-2"
    assert t.state.job("job-1").status is JobStatus.ENDED
    assert t.state.job("job-1").outcome == f"lost ({reason})"


def test_auto_release_false_locks_stay_in_force_and_are_never_swept():
    state = held(req("job-1", "object_type", auto_release=False, ttl_s=100))
    late = at(10_000)
    lock_view = locks.view(only_lock(state), late, POLICY)
    assert lock_view.in_force and lock_view.health is Health.CRITICAL
    assert lock_view.death_reason is ReleaseReason.TTL_EXPIRED
    assert not allowed(state, "object_type", late)
    sweep = locks.sweep(state, late, POLICY, TTL + HEARTBEAT)
    assert sweep.audit == [] and only_lock(sweep.state).job_id == "job-1"
    assert kinds(locks.acquire(state, req("job-2", "object_type"), late, POLICY)) == [AuditKind.REFUSED]


# --- heartbeat --------------------------------------------------------------------------


def beat(state, now_s, event_s=None, job="job-1", **kw):
    event_time = at(event_s if event_s is not None else now_s)
    return locks.heartbeat(state, HeartbeatUpdate(job_id=job, event_time=event_time, **kw), at(now_s), POLICY)


def test_heartbeat_refreshes_the_lock_and_moves_its_deadline():
    state = held(req("job-1", "object_type"))
    t = beat(state, 150, status="indexing", progress_percent=40)
    assert t.changed and t.audit == []
    lock = only_lock(t.state)
    assert lock.last_heartbeat == at(150) and lock.holder_status == "indexing" and lock.progress_percent == 40
    assert t.state.job("job-1").last_event_time == at(150)
    assert not allowed(t.state, "object_type", at(150 + HB_DEADLINE_S) - MS)
    assert allowed(t.state, "object_type", at(150 + HB_DEADLINE_S))
    assert only_lock(beat(state, 30, event_s=500).state).last_heartbeat == at(30)  # future time counts as now


def test_stale_heartbeat_is_ignored():
    state = beat(held(req()), 100).state
    t = beat(state, 120, event_s=50, progress_percent=99)
    assert kinds(t) == [AuditKind.IGNORED] and "stale" in t.audit[0].reason
    assert only_lock(t.state).last_heartbeat == at(100) and only_lock(t.state).progress_percent is None
    # only its clock observation is kept (saved), so the skew estimate keeps moving (indexgate.skew)
    assert t.changed and t.state.job("job-1").clock.observations == 2 and t.state.job("job-1").last_event_time == at(100)


def test_heartbeat_never_revives_a_dead_lock():
    state = held(req("job-1", "object_type"))
    t = beat(state, HB_DEADLINE_S)
    assert kinds(t) == [AuditKind.RELEASED] and t.audit[0].reason == ReleaseReason.HEARTBEAT_MISSED
    assert t.state.locks == [] and t.state.job("job-1").status is JobStatus.ENDED
    assert kinds(beat(t.state, HB_DEADLINE_S + 1)) == [AuditKind.IGNORED]


def test_eta_beyond_remaining_ttl_extends_expiry():
    state = held(req())
    t = beat(state, 100, estimated_remaining_s=5000)
    assert kinds(t) == [AuditKind.EXTENDED]
    assert only_lock(t.state).expires_at == at(100 + 5000 + 60)
    assert t.audit[0].detail["from"] == at(3600).isoformat()
    assert t.audit[0].detail["to"] == at(5160).isoformat()


def test_eta_extension_is_capped_at_max_ttl_and_small_eta_extends_nothing():
    capped = beat(held(req()), 100, estimated_remaining_s=50_000)
    assert only_lock(capped.state).expires_at == at(POLICY.max_ttl_s)
    small = beat(held(req()), 100, estimated_remaining_s=100)
    assert small.audit == [] and only_lock(small.state).expires_at == at(3600)


# --- operators --------------------------------------------------------------------------


@pytest.mark.parametrize("by_s", [0, -5])
def test_extend_requires_positive_seconds(by_s):
    state = held(req())
    with pytest.raises(InvalidRequest, match="positive"):
        locks.extend(state, only_lock(state).lock_id, by_s, "ops", "why", T0, POLICY)


def test_extend_pushes_expiry_and_audits():
    state = held(req())
    with pytest.raises(LockNotFound):
        locks.extend(state, "nope", 10, "ops", "why", T0, POLICY)
    t = locks.extend(state, only_lock(state).lock_id, 600, "ops", "big rebuild", at(10), POLICY)
    assert only_lock(t.state).expires_at == at(3600 + 600)
    (entry,) = t.audit
    assert entry.kind is AuditKind.EXTENDED and entry.actor == "ops" and entry.reason == "big rebuild"


def test_extend_refuses_a_dead_lock():
    state = held(req())
    with pytest.raises(InvalidRequest, match="already dead"):
        locks.extend(state, only_lock(state).lock_id, 600, "ops", "why", at(HB_DEADLINE_S), POLICY)


def test_extend_caps_at_max_ttl_then_refuses():
    state = held(req())
    lock_id = only_lock(state).lock_id
    state = locks.extend(state, lock_id, 100_000, "ops", "why", at(10), POLICY).state
    assert only_lock(state).expires_at == at(POLICY.max_ttl_s)
    with pytest.raises(InvalidRequest, match="maximum TTL"):
        locks.extend(state, lock_id, 1, "ops", "why", at(20), POLICY)


def test_force_release_ends_the_job():
    state = held(req("job-1", "object_type"))
    with pytest.raises(LockNotFound):
        locks.force_release(state, "nope", "ops", "why", T0, POLICY)
    t = locks.force_release(state, only_lock(state).lock_id, "ops", "stuck", at(5), POLICY)
    (entry,) = t.audit
    assert entry.kind is AuditKind.RELEASED and entry.reason == ReleaseReason.FORCED and entry.detail["why"] == "stuck"
    assert t.state.locks == [] and allowed(t.state, "object_type", at(5))
    job = t.state.job("job-1")
    assert job.status is JobStatus.ENDED and job.outcome == "FORCED"


def test_release_job_removes_all_its_locks_once():
    state = held(req("job-1", "object_type", "link_type"))
    t = locks.release_job(state, "job-1", ReleaseReason.COMPLETED, "funnel", at(30), POLICY)
    assert kinds(t) == [AuditKind.RELEASED] * 2 and t.state.locks == []
    assert t.state.job("job-1").outcome == "completed"
    assert kinds(locks.release_job(t.state, "job-1", ReleaseReason.COMPLETED, "funnel", at(31), POLICY)) == [
        AuditKind.IGNORED]


# --- sweeps -----------------------------------------------------------------------------


def two_dying_locks() -> BranchState:
    """At 150 s: job-ttl's lock is TTL-expired (beats kept up), job-hb's missed its heartbeats."""
    state = held(req("job-ttl", "object_type", ttl_s=100), req("job-hb", "link_type", heartbeat_interval_s=30))
    return beat(state, 90, job="job-ttl").state


@pytest.mark.parametrize(("reasons", "released"), [
    (TTL, {"job-ttl"}), (HEARTBEAT, {"job-hb"}), (TTL + HEARTBEAT, {"job-ttl", "job-hb"}),
])
def test_sweep_releases_only_the_asked_reasons(reasons, released):
    t = locks.sweep(two_dying_locks(), at(150), POLICY, reasons)
    assert {e.job_id for e in t.audit} == released
    assert all(e.kind is AuditKind.RELEASED and e.reason in map(str, reasons) for e in t.audit)
    assert {lock.job_id for lock in t.state.locks} == {"job-ttl", "job-hb"} - released
    assert kinds(locks.sweep(t.state, at(150), POLICY, reasons)) == []


def test_refresh_health_announces_each_change_once():
    state = held(req())
    t = locks.refresh_health(state, at(61), POLICY)
    (entry,) = t.audit
    assert entry.kind is AuditKind.HEALTH_CHANGED and entry.detail["from"] == "healthy"
    assert entry.detail["to"] == "warning" and t.changed
    again = locks.refresh_health(t.state, at(62), POLICY)
    assert again.audit == [] and not again.changed
    critical = locks.refresh_health(again.state, at(HB_DEADLINE_S), POLICY)
    assert [e.detail["to"] for e in critical.audit] == ["critical"]


# --- permission check -------------------------------------------------------------------


@pytest.mark.parametrize("action", ["read", "draft"])
def test_read_and_draft_are_always_allowed(action):
    assert allowed(held(req()), None, T0, action)


def test_check_on_a_branch_without_state_is_allowed():
    decision = permissions.check(None, BRANCH, "object_type", "write", T0, POLICY)
    assert decision.allowed and decision.blocking_lock is None


def test_denial_message_explains_the_typed_lock():
    state = held(req("job-1", "object_type", holder="builder-a"))
    state = beat(state, 30, progress_percent=75, estimated_remaining_s=600).state
    decision = permissions.check(state, BRANCH, "object_type", "write", at(40), POLICY)
    lock = only_lock(state)
    assert not decision.allowed and decision.blocking_lock.lock_id == lock.lock_id
    for needle in ("builder-a", "job job-1", "progress 75%", "ETA 600 s", lock.expires_at.isoformat(),
                   f"other resource types of {BRANCH} stay editable"):
        assert needle in decision.message, needle


def test_denial_message_for_a_branch_wide_lock():
    message = permissions.check(held(req()), BRANCH, "object_type", "write", T0, POLICY).message
    assert f"the whole branch {BRANCH}" in message and "draft edits are allowed" in message
    assert "stay editable" not in message


# --- purity -----------------------------------------------------------------------------


def _rules(state: BranchState):
    lock_id = next(lock.lock_id for lock in state.locks if lock.job_id == "job-1")
    now = at(HB_DEADLINE_S + 1)  # job-1 and job-2 dead, nothing swept yet
    return [
        lambda: locks.acquire(state, req("job-9", "object_type"), now, POLICY),
        lambda: locks.acquire(state, req("job-9", "action_type"), at(1), POLICY),
        lambda: locks.heartbeat(state, HeartbeatUpdate("job-1", estimated_remaining_s=9000), at(100), POLICY),
        lambda: locks.heartbeat(state, HeartbeatUpdate("job-2"), now, POLICY),
        lambda: locks.release_job(state, "job-1", ReleaseReason.FAILED, "funnel", at(1), POLICY),
        lambda: locks.force_release(state, lock_id, "ops", "why", at(1), POLICY),
        lambda: locks.extend(state, lock_id, 60, "ops", "why", at(1), POLICY),
        lambda: locks.sweep(state, now, POLICY, TTL + HEARTBEAT),
        lambda: locks.refresh_health(state, at(100), POLICY),
        lambda: permissions.check(state, BRANCH, "object_type", "write", at(1), POLICY),
    ]


@pytest.mark.parametrize("index", range(10))
def test_rules_never_mutate_their_input(index):
    state = held(req("job-1", "object_type"), req("job-2", "link_type"))
    before = state.model_dump()
    result = _rules(state)[index]()
    assert state.model_dump() == before
    if isinstance(result, locks.Transition):
        assert result.state is not state


def test_finished_jobs_are_remembered_newest_first_up_to_the_bound() -> None:
    policy = Policy(max_finished_jobs=5, job_retention_s=3600)
    state = BranchState(branch=BRANCH)
    for n in range(8):
        state = locks.acquire(state, req(f"job-{n}", "object_type"), at(n), policy).state
        state = locks.release_job(state, f"job-{n}", ReleaseReason.COMPLETED, "funnel", at(n + 0.5), policy).state
    remembered = set(locks.acquire(state, req("probe", "link_type"), at(10), policy).state.finished)
    assert {"job-3", "job-4", "job-5", "job-6", "job-7"} <= remembered and "job-0" not in remembered
    late = locks.acquire(state, req("job-7", "object_type"), at(11), policy)
    assert [e.kind for e in late.audit] == [AuditKind.IGNORED] and not late.state.locks  # still guarded


def test_finished_jobs_past_retention_are_forgotten() -> None:
    policy = Policy(job_retention_s=60)
    state = locks.acquire(BranchState(branch=BRANCH), req("old", "object_type"), T0, policy).state
    state = locks.release_job(state, "old", ReleaseReason.COMPLETED, "funnel", at(1), policy).state
    assert "old" in state.finished
    assert "old" not in locks.acquire(state, req("new", "link_type"), at(120), policy).state.finished
