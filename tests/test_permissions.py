"""The ``Decision`` every way of asking returns: ``retry_after_s`` and ``version`` (pure)."""

from __future__ import annotations

import pytest

from indexgate import locks, permissions
from indexgate.errors import InvalidRequest, MalformedEvent
from indexgate.locks import AcquireRequest, HeartbeatUpdate
from indexgate.schemas.records import BranchState, LockKind
from tests.service_kit import POLICY
from indexgate.service import Service
from tests.test_locks import BRANCH, at, grant, held, req
from tests.test_service import start


def decide(state: BranchState | None, rt: str | None, seconds: float = 0, action: str = "write"):
    return permissions.check(state, BRANCH, rt, action, at(seconds), POLICY)


def with_eta(state: BranchState, job: str, after_s: float, eta_s: float, progress: float = 40) -> BranchState:
    update = HeartbeatUpdate(job_id=job, progress_percent=progress, estimated_remaining_s=eta_s)
    return locks.heartbeat(state, update, at(after_s), POLICY).state


def test_allowed_has_no_retry_after_and_carries_the_branch_version():
    state = held(req("job-1", "object_type")).model_copy(update={"version": 7})
    decision = decide(state, "link_type")
    assert decision.allowed and decision.retry_after_s is None and decision.version == 7
    assert decide(None, "link_type").version == 0  # a branch that never had a lock


def test_denial_without_an_eta_has_an_unknown_retry_after():
    decision = decide(held(req("job-1", "object_type")), "object_type", 5)
    assert not decision.allowed and decision.retry_after_s is None


def test_denial_with_an_eta_retries_when_the_eta_is_reached():
    state = with_eta(held(req("job-1", "object_type")), "job-1", after_s=10, eta_s=120)
    decision = decide(state, "object_type", 40)  # 30 s after the heartbeat that said 120 s
    assert not decision.allowed and decision.retry_after_s == pytest.approx(90)
    assert decision.blocking_lock.progress_percent == 40 and decision.blocking_lock.estimated_remaining_s == 120
    assert decide(state, "object_type", 140).retry_after_s is None  # ETA passed, still held: unknown


def test_retry_after_never_exceeds_the_lock_ttl():
    state = held(req("job-1", "object_type", ttl_s=60))
    lock = state.locks[0].model_copy(update={"estimated_remaining_s": 600})  # an ETA past the TTL
    state = state.model_copy(update={"locks": [lock]})
    assert decide(state, "object_type", 2).retry_after_s == pytest.approx(58)


def test_switch_blackout_asks_to_retry_in_milliseconds():
    state = held(req("switch-1", "object_type", kind=LockKind.SWITCH, ttl_s=60))
    decision = decide(state, "object_type", 0.001)
    assert not decision.allowed and decision.blocking_lock.kind is LockKind.SWITCH
    assert decision.retry_after_s == pytest.approx(permissions.SWITCH_RETRY_AFTER_S)


def test_retry_after_waits_for_every_blocking_lock_and_is_unknown_if_one_is():
    state = held(req("job-1", "object_type"), req("job-2", "link_type"))
    state = with_eta(state, "job-1", 0, 30)
    state = with_eta(state, "job-2", 0, 90)
    assert decide(state, None, 10).retry_after_s == pytest.approx(80)  # whole branch: both must end
    state = grant(state, req("job-3", "interface"))
    assert decide(state, None, 10).retry_after_s is None  # job-3 reported no ETA


def test_whole_branch_aliases():
    assert permissions.whole_branch("*") is None and permissions.whole_branch("-") is None
    assert permissions.whole_branch(None) is None and permissions.whole_branch("object_type") == "object_type"


def test_read_is_allowed_even_during_a_switch():
    state = held(AcquireRequest(job_id="s", holder="x", resource_types=(None,), reason="switch", kind=LockKind.SWITCH))
    assert decide(state, "object_type", action="read").allowed
    assert decide(state, "object_type", 0.001).retry_after_s == pytest.approx(permissions.SWITCH_RETRY_AFTER_S)


# --- empty names are refused, never answered "allowed" -----------------------------------


BLANK = ["", " ", "\t\n"]


@pytest.mark.parametrize("blank", BLANK, ids=repr)
def test_a_blank_branch_resource_type_or_action_is_refused(blank: str):
    state = held(req("job-1", "object_type"))
    for branch, rt, action in [(blank, "object_type", "write"), (BRANCH, blank, "write"), (BRANCH, "object_type", blank)]:
        with pytest.raises(InvalidRequest, match="must not be empty"):
            permissions.check(state, branch, rt, action, at(0), POLICY)
    assert not decide(state, None).allowed  # None stays "the whole branch"


def test_the_service_refuses_a_blank_name(service: Service):
    start(service, "job-1", "object_type")
    for args in [(BRANCH, ""), ("", "object_type"), (BRANCH, "object_type", "")]:
        with pytest.raises(InvalidRequest):
            service.check(*args)
    assert not service.check(BRANCH, permissions.whole_branch("*")).allowed


@pytest.mark.parametrize("alias", sorted(permissions.WHOLE_BRANCH_ALIASES))
def test_a_started_naming_a_whole_branch_alias_locks_the_whole_branch(service: Service, alias: str):
    """``*`` (or ``-``) in ``resource_types`` means the whole branch, as it does to the CLI and the API."""
    assert start(service, "job-1", alias, "object_type").status == "applied"
    [view] = service.list_locks()
    assert view.lock.resource_type is None
    for rt in ("object_type", "link_type", None):
        assert not service.check(BRANCH, rt).allowed, rt


def test_a_shadow_build_naming_the_whole_branch_switches_under_a_branch_wide_lock(service: Service):
    start(service, "job-s", "*", indexing_mode="shadow", index_type="SEARCH_INDEX")
    [(build, _)] = service.shadows.builds()
    assert build.resource_types == []  # the switch lock it will take is branch-wide


@pytest.mark.parametrize("blank", BLANK, ids=repr)
def test_a_started_naming_a_blank_resource_type_is_malformed(service: Service, blank: str):
    with pytest.raises(MalformedEvent, match="non-empty strings"):
        start(service, "job-1", blank)
    assert service.list_locks() == []
