"""Due times, pure: ``due.branch_due`` / ``due.index_due`` say exactly when a sweep next
has something to do, as the liveness rules themselves (``death_reason``, ``health``,
``effective_state``, retention) decide it - checked against those functions at many
instants, so a change to them that the due times do not follow fails here."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from indexgate import due as dues, locks, shadows
from indexgate.rules import Policy
from indexgate.schemas.records import BranchState, Health, Lock
from indexgate.schemas.shadows import IndexPointer, IndexState, ShadowBuild, ShadowState as S

T0 = datetime(2025, 6, 26, 10, 0, tzinfo=timezone.utc)
POLICY = Policy(missed_heartbeats=3, build_retention_s=3600)
US = timedelta(microseconds=1)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def a_lock(interval_s: float = 60, ttl_s: float = 3600, beat_s: float = 0, health: Health = Health.HEALTHY,
           auto_release: bool = True) -> Lock:
    return Lock(branch="b", resource_type="docs", holder="h", job_id="j", fencing_token=1, acquired_at=T0,
                expires_at=at(ttl_s), heartbeat_interval_s=interval_s, last_heartbeat=at(beat_s),
                last_health=health, auto_release=auto_release)


def work_for_a_sweep(lock: Lock, now: datetime) -> bool:
    dies = lock.auto_release and locks.death_reason(lock, now, POLICY) is not None
    return dies or locks.health(lock, now, POLICY) != lock.last_health


def instants(start: datetime, end: datetime, lock: Lock) -> list[datetime]:
    """Instants between ``start`` and ``end`` (exclusive), including the ones right beside
    every boundary the rules know of."""
    edges = [lock.expires_at, locks.heartbeat_deadline(lock, POLICY),
             lock.last_heartbeat + timedelta(seconds=lock.heartbeat_interval_s)]
    spread = [start + (end - start) * (i / 50) for i in range(50)]
    near = [edge + d for edge in edges for d in (-US, timedelta(0), US)]
    return [t for t in spread + near if start <= t < end]


@settings(max_examples=300, deadline=None)
@given(interval=st.floats(0.5, 600), ttl=st.floats(1, 20_000), beat=st.floats(0, 5_000),
       now_s=st.floats(0, 25_000), health=st.sampled_from(list(Health)), auto=st.booleans())
def test_lock_due_is_the_first_instant_a_sweep_has_work(interval, ttl, beat, now_s, health, auto):
    lock = a_lock(interval, ttl, min(beat, ttl), health, auto)
    now = at(now_s)
    due = dues.lock_due(lock, now, POLICY)
    horizon = due if due is not None else now + timedelta(days=30)
    assert all(not work_for_a_sweep(lock, t) for t in instants(now, horizon, lock))
    if due is not None:
        assert due >= now and work_for_a_sweep(lock, due)


def test_a_heartbeating_lock_is_next_due_when_it_turns_warning():
    lock = a_lock(interval_s=60, beat_s=0)
    due = dues.lock_due(lock, at(10), POLICY)
    assert due == at(60) + US  # WARNING only *after* one interval without a heartbeat
    assert locks.health(lock, due, POLICY) is Health.WARNING


def test_a_recorded_warning_is_next_due_at_death_and_a_recorded_death_never():
    warned = a_lock(interval_s=60, health=Health.WARNING)
    assert dues.lock_due(warned, at(90), POLICY) == locks.heartbeat_deadline(warned, POLICY) == at(180)
    kept = a_lock(interval_s=60, health=Health.CRITICAL, auto_release=False)  # in force until an operator acts
    assert dues.lock_due(kept, at(500), POLICY) is None
    recovered = a_lock(interval_s=60, beat_s=100, health=Health.WARNING)  # a heartbeat came since
    assert dues.lock_due(recovered, at(101), POLICY) == at(101)  # the health sweep has a change to record now


def test_the_branch_is_due_at_its_soonest_lock_and_never_without_locks():
    state = BranchState(branch="b", locks=[a_lock(ttl_s=30), a_lock(interval_s=600)])
    assert dues.branch_due(state, T0, POLICY) == at(30)
    assert dues.branch_due(BranchState(branch="b"), T0, POLICY) is None


# --- shadow builds -----------------------------------------------------------------------


def a_build(sid: str, state: S, beat_s: float = 0, claim_s: float | None = None,
            finished_s: float | None = None) -> ShadowBuild:
    return ShadowBuild(shadow_index_id=sid, job_id=f"job-{sid}", branch="b", index_type="SEARCH", state=state,
                       holder="h", created_at=T0, heartbeat_interval_s=10, last_heartbeat=at(beat_s),
                       switch_claim_expires_at=at(claim_s) if claim_s is not None else None,
                       finished_at=at(finished_s) if finished_s is not None else None)


def pointer(sid: str) -> IndexPointer:
    return IndexPointer(shadow_index_id=sid, location=f"/idx/{sid}", switched_at=T0, fencing_token=1)


def shadow_work(state: IndexState, now: datetime) -> bool:
    changes = any(shadows.effective_state(b, now, POLICY) is not b.state for b in state.builds)
    forget = any((t := shadows.forget_at(state, b, POLICY)) is not None and t <= now for b in state.builds)
    return changes or forget


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(list(S)), beat=st.floats(0, 100), claim=st.floats(0, 100), finished=st.floats(0, 100),
       now_s=st.floats(0, 5000), backup=st.booleans())
def test_index_due_is_the_first_instant_the_shadow_sweep_has_work(kind, beat, claim, finished, now_s, backup):
    build = a_build("s1", kind, beat, claim if kind is S.SWITCHING else None, finished)
    state = IndexState(branch="b", index_type="SEARCH", builds=[build], backups=[pointer("s1")] if backup else [])
    now = at(now_s)
    due = dues.index_due(state, now, POLICY)
    end = due if due is not None else now + timedelta(days=30)
    probes = [now + (end - now) * (i / 200) for i in range(200)]
    assert all(not shadow_work(state, t) for t in probes if t < end)
    if due is not None:
        assert due >= now and shadow_work(state, due)


def test_finished_builds_are_due_at_their_retention_but_active_and_backups_never():
    state = IndexState(branch="b", index_type="SEARCH", active=pointer("live"), backups=[pointer("old")], builds=[
        a_build("live", S.ACTIVE), a_build("old", S.CLEANUP, finished_s=5), a_build("bad", S.FAILED, finished_s=10)])
    assert dues.index_due(state, at(20), POLICY) == at(10 + 3600)  # "bad" only
    swept = shadows.sweep(state, at(10 + 3600), POLICY)
    assert [b.shadow_index_id for b in swept.state.builds] == ["live", "old"] and swept.changed
    assert dues.index_due(swept.state, at(10 + 3600), POLICY) is None
