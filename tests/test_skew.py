"""Skew-proof liveness: a funnel clock off by up to INDEXGATE_MAX_CLOCK_SKEW_S keeps its locks.

The rule (``indexgate.skew``) is tested pure, then through the Service over SQLite on a
test clock (the worker's clock) while the events carry the funnel's clock in ``time``,
then through the CLI (``locks show`` / ``locks health``, text and ``--json``).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from indexgate import skew
from indexgate.cli import main
from indexgate.clock import utcnow
from indexgate.events import catalog
from indexgate.locks import Policy
from indexgate.schemas.records import AuditKind, ClockSkew, ReleaseReason
from indexgate.service import Service
from indexgate.settings import Settings
from indexgate.store import initialize_store
from tests.service_kit import POLICY, T0, MutableClock
from tests.test_service import BRANCH, HEARTBEAT, STARTED, event

INTERVAL_S = POLICY.default_heartbeat_interval_s  # 60 s; dead after 3 missed = 180 s
TRANSIT_S = 0.2  # broker + queue time of a prompt event
BOUND_S = POLICY.max_clock_skew_s  # 600 s


class Funnel:
    """A funnel host whose clock is ``skew_s`` off the worker's; it sends through ``service``."""

    def __init__(self, service: Service, clock: MutableClock, skew_s: float, job: str = "job-1") -> None:
        self.service, self.clock, self.skew_s, self.job = service, clock, skew_s, job

    def stamp(self, sent: datetime) -> datetime:
        return sent + timedelta(seconds=self.skew_s)

    def start(self, shadow: bool = False):
        self.clock.advance(TRANSIT_S)
        data = {"job_id": self.job, "branch": BRANCH, "resource_types": ["object_type"], "service_name": "funnel"}
        if shadow:
            data |= {"indexing_mode": "shadow", "index_type": "SEARCH_INDEX"}
        return catalog.apply(self.service, event(STARTED, data, time=self.stamp(self.clock.now - timedelta(seconds=TRANSIT_S))))

    def beat(self, sent: datetime | None = None, stamped: bool = True):
        """A heartbeat sent at ``sent`` (default: now, arriving after TRANSIT_S) applied now."""
        if sent is None:
            self.clock.advance(TRANSIT_S)
            sent = self.clock.now - timedelta(seconds=TRANSIT_S)
        time = self.stamp(sent) if stamped else None
        return catalog.apply(self.service, event(HEARTBEAT, {"job_id": self.job, "status": "indexing"}, time=time))


def views(service: Service):
    return service.list_locks(BRANCH)


def alive(service: Service) -> bool:
    return not service.check(BRANCH, "object_type").allowed


# --- the rule, pure ------------------------------------------------------------------


def test_the_estimate_is_the_least_delayed_observation() -> None:
    clock = ClockSkew()
    for delay_s in (5.0, 0.5, 30.0):  # a clock 100 s slow; three events with different transits
        received = T0 + timedelta(seconds=delay_s)
        clock = skew.observe(clock, T0 - timedelta(seconds=100), received, BOUND_S)
    assert clock.offset_s == -100.5 and clock.last_offset_s == -130.0 and clock.observations == 3
    assert skew.correction_s(clock, BOUND_S) == -100.5
    # the 30 s late event counts when it was sent (0.5 s of the least transit aside), not when it arrived
    late = T0 + timedelta(seconds=30)
    assert skew.alive_at(clock, T0 - timedelta(seconds=100), late, BOUND_S) == T0 + timedelta(seconds=0.5)


def test_an_event_never_counts_later_than_its_receipt_or_without_time_at_receipt() -> None:
    clock = skew.observe(ClockSkew(), T0, T0, BOUND_S)
    assert skew.alive_at(clock, T0 + timedelta(seconds=50), T0 + timedelta(seconds=10), BOUND_S) == T0 + timedelta(seconds=10)
    assert skew.observe(clock, None, T0, BOUND_S) == clock
    assert skew.alive_at(clock, None, T0 + timedelta(seconds=7), BOUND_S) == T0 + timedelta(seconds=7)


@pytest.mark.parametrize("edge", [datetime.max, datetime.min], ids=["year-9999", "year-1"])
def test_a_time_at_the_edge_of_the_calendar_counts_without_overflow(edge: datetime) -> None:
    time = edge.replace(tzinfo=T0.tzinfo)
    slow = skew.observe(ClockSkew(), T0 - timedelta(seconds=300), T0, BOUND_S)  # the estimate adds 300 s
    clock = skew.observe(slow, time, T0, BOUND_S)
    counted = skew.alive_at(clock, time, T0, BOUND_S)
    assert counted == T0 if edge is datetime.max else counted < T0 - timedelta(days=3000)


def test_a_far_future_time_is_not_believed() -> None:
    prompt = skew.observe(ClockSkew(), T0, T0, BOUND_S)
    bogus = skew.observe(prompt, T0 + timedelta(days=365), T0 + timedelta(seconds=1), BOUND_S)
    assert bogus.offset_s == 0 and skew.beyond_bound(bogus, BOUND_S)  # reported, not kept
    again = skew.observe(bogus, T0 + timedelta(seconds=60), T0 + timedelta(seconds=60), BOUND_S)
    assert skew.alive_at(again, T0 + timedelta(seconds=60), T0 + timedelta(seconds=60), BOUND_S) == T0 + timedelta(seconds=60)
    assert not skew.beyond_bound(again, BOUND_S)


def test_a_slow_clock_beyond_the_bound_is_corrected_by_the_bound_only() -> None:
    clock = skew.observe(ClockSkew(), T0 - timedelta(seconds=900), T0, BOUND_S)
    assert skew.correction_s(clock, BOUND_S) == -BOUND_S and skew.beyond_bound(clock, BOUND_S)
    assert skew.alive_at(clock, T0 - timedelta(seconds=900), T0, BOUND_S) == T0 - timedelta(seconds=300)


# --- locks ---------------------------------------------------------------------------


@pytest.mark.parametrize("skew_s", [-600, 600], ids=["10-min-behind", "10-min-ahead"])
def test_a_skewed_funnel_keeps_its_lock_over_five_heartbeat_intervals(service: Service, clock: MutableClock,
                                                                      skew_s: float) -> None:
    funnel = Funnel(service, clock, skew_s)
    assert funnel.start().status == "applied"
    acquired_at = clock.now
    for _ in range(5):
        clock.advance(INTERVAL_S - TRANSIT_S)
        assert funnel.beat().status == "applied"
        [view] = views(service)
        assert view.in_force and view.health == "healthy" and alive(service)
        sent = clock.now - timedelta(seconds=TRANSIT_S)  # on our clock: it counts when it was sent (or received)
        assert sent <= view.lock.last_heartbeat <= clock.now
    assert clock.now - acquired_at >= timedelta(seconds=5 * INTERVAL_S) - timedelta(seconds=1)
    assert views(service)[0].clock_skew_s == pytest.approx(max(skew_s - TRANSIT_S, -BOUND_S))
    assert not [e for e in service.store.audit(50) if e.kind is AuditKind.RELEASED]


def test_without_the_correction_a_slow_funnel_loses_its_lock(store, clock: MutableClock) -> None:
    """What the bound buys: with INDEXGATE_MAX_CLOCK_SKEW_S=0 the same slow funnel loses it."""
    service = Service(store, Policy(**{**POLICY.__dict__, "max_clock_skew_s": 0}), clock=clock)
    funnel = Funnel(service, clock, -600)
    funnel.start()
    for _ in range(3):
        clock.advance(INTERVAL_S - TRANSIT_S)
        funnel.beat()
    clock.advance(INTERVAL_S)
    assert not alive(service)


@pytest.mark.parametrize("skew_s", [-600, 0, 600])
def test_backlogged_heartbeats_do_not_make_a_dead_holder_look_alive(service: Service, clock: MutableClock,
                                                                    skew_s: float) -> None:
    funnel = Funnel(service, clock, skew_s)
    funnel.start()  # t = 0.2
    clock.advance(INTERVAL_S - TRANSIT_S)
    funnel.beat()  # sent at 60, on time: the lock lives until 240
    sent_last = [T0 + timedelta(seconds=100), T0 + timedelta(seconds=110)]  # then the holder dies
    clock.now = T0 + timedelta(seconds=235)  # the first of its last heartbeats waited 135 s in a backlog
    assert funnel.beat(sent=sent_last[0]).status == "applied"
    [view] = views(service)
    sent = sent_last[0]  # it counts when it was sent (give or take the least transit seen), not at 235
    assert sent <= view.lock.last_heartbeat <= sent + timedelta(seconds=TRANSIT_S)
    clock.now = T0 + timedelta(seconds=281)
    assert not alive(service)  # dead at 100.2 + 180, though its heartbeat arrived at 235
    clock.now = T0 + timedelta(seconds=300)  # the last one waited 190 s, longer than the deadline
    assert funnel.beat(sent=sent_last[1]).status == "applied"
    assert views(service) == [] and not alive(service)
    [released] = [e for e in service.store.audit(50) if e.kind is AuditKind.RELEASED]
    assert released.reason == ReleaseReason.HEARTBEAT_MISSED


def test_a_heartbeat_without_time_counts_at_its_receipt(service: Service, clock: MutableClock) -> None:
    funnel = Funnel(service, clock, -600)
    funnel.start()
    clock.advance(INTERVAL_S)
    funnel.beat(stamped=False)
    assert views(service)[0].lock.last_heartbeat == clock.now


@pytest.mark.parametrize(("skew_s", "survives"), [(-900, False), (900, True)], ids=["15-min-behind", "15-min-ahead"])
def test_skew_beyond_the_bound_is_handled_as_documented(service: Service, clock: MutableClock, skew_s: float,
                                                        survives: bool) -> None:
    """Slow beyond the bound: corrected by the bound only, its heartbeats look 300 s old and
    the lock dies at its first deadline. Fast beyond it: not believed, counted at receipt."""
    funnel = Funnel(service, clock, skew_s)
    funnel.start()
    [view] = views(service)
    assert view.clock_skew_beyond_bound and view.clock_skew_s == (-BOUND_S if skew_s < 0 else 0)
    for _ in range(5):
        clock.advance(INTERVAL_S - TRANSIT_S)
        funnel.beat()
    assert alive(service) is survives
    if not survives:
        [released] = [e for e in service.store.audit(50) if e.kind is AuditKind.RELEASED]
        assert released.reason == ReleaseReason.HEARTBEAT_MISSED


# --- shadow builds -------------------------------------------------------------------


@pytest.mark.parametrize("skew_s", [-600, 600], ids=["10-min-behind", "10-min-ahead"])
def test_a_skewed_funnel_keeps_its_shadow_build_alive(service: Service, clock: MutableClock, skew_s: float) -> None:
    funnel = Funnel(service, clock, skew_s, job="job-s")
    assert funnel.start(shadow=True).status == "applied"
    for _ in range(5):
        clock.advance(INTERVAL_S - TRANSIT_S)
        assert funnel.beat().status == "applied"
        assert service.shadows.status("job-s")["state"] == "BUILDING"
    assert service.shadows.status("job-s")["clock"]["observations"] == 6


def test_a_backlogged_heartbeat_does_not_keep_a_dead_shadow_build_alive(service: Service, clock: MutableClock) -> None:
    funnel = Funnel(service, clock, 600, job="job-s")
    funnel.start(shadow=True)
    clock.now = T0 + timedelta(seconds=170)
    funnel.beat(sent=T0 + timedelta(seconds=10))  # sent at 10, waited 160 s
    clock.now = T0 + timedelta(seconds=191)
    assert service.shadows.status("job-s")["state"] == "FAILED"  # dead at 10.2 + 180


# --- the CLI shows the holder's estimated skew -----------------------------------------


def test_locks_show_and_health_show_the_holders_skew(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INDEXGATE_DATA_DIR", str(tmp_path))
    settings = Settings(data_dir=tmp_path)
    initialize_store(settings)
    service = Service.from_settings(settings)
    data = {"job_id": "job-1", "branch": BRANCH, "resource_types": ["object_type"], "service_name": "funnel"}
    catalog.apply(service, event(STARTED, data, time=utcnow() - timedelta(seconds=300)))  # a clock 5 min slow
    [view] = service.list_locks()
    runner = CliRunner()
    shown = json.loads(runner.invoke(main, ["locks", "show", view.lock.lock_id, "--json"]).output)
    health = json.loads(runner.invoke(main, ["locks", "health", view.lock.lock_id, "--json"]).output)
    for payload in (shown, health):
        assert -300.5 < payload["clock_skew_s"] <= -300 and payload["clock_skew_beyond_bound"] is False
    assert shown["clock"]["observations"] == 1
    text = runner.invoke(main, ["locks", "health", view.lock.lock_id]).output
    assert "holder clock skew -300." in text
    assert "clock_skew_s" in runner.invoke(main, ["locks", "show", view.lock.lock_id]).output


# --- one outlier, a backward step: the estimate recovers, the lock lives -----------------


OUTLIERS = {"far-future": 365 * 86_400.0, "5-min-ahead": 300.0}


@pytest.mark.parametrize("outlier_s", list(OUTLIERS.values()), ids=list(OUTLIERS))
def test_one_outlying_heartbeat_does_not_kill_a_live_lock(service: Service, clock: MutableClock,
                                                          outlier_s: float) -> None:
    """One heartbeat stamped +1 year (not believed) or +5 min (inside the bound, believed),
    then heartbeats on schedule: the lock lives, and the funnel's heartbeats keep counting."""
    funnel = Funnel(service, clock, 0)
    funnel.start()
    clock.advance(INTERVAL_S - TRANSIT_S)
    assert funnel.beat(sent=clock.now - timedelta(seconds=TRANSIT_S) + timedelta(seconds=outlier_s)).status == "applied"
    outcomes = []
    for _ in range(5):
        clock.advance(INTERVAL_S - TRANSIT_S)
        outcomes.append(funnel.beat().status)
        assert alive(service), f"lock lost {clock.now - T0} after the start; heartbeats so far {outcomes}"
    [view] = views(service)
    assert view.in_force and view.clock_skew_s == pytest.approx(-TRANSIT_S)  # the estimate came back
    assert outcomes[-3:] == ["applied"] * 3 and outcomes.count("ignored") <= 1
    assert not [e for e in service.store.audit(50) if e.kind is AuditKind.RELEASED]
    job = service.store.load(BRANCH).job("job-1")
    assert job.last_event_time is not None and job.last_event_time < clock.now  # never the bogus far-future time


@pytest.mark.parametrize("outlier_s", list(OUTLIERS.values()), ids=list(OUTLIERS))
def test_one_outlying_heartbeat_does_not_kill_a_live_shadow_build(service: Service, clock: MutableClock,
                                                                  outlier_s: float) -> None:
    funnel = Funnel(service, clock, 0, job="job-s")
    funnel.start(shadow=True)
    clock.advance(INTERVAL_S - TRANSIT_S)
    funnel.beat(sent=clock.now - timedelta(seconds=TRANSIT_S) + timedelta(seconds=outlier_s))
    outcomes = []
    for _ in range(5):
        clock.advance(INTERVAL_S - TRANSIT_S)
        outcomes.append(funnel.beat().status)
        assert service.shadows.status("job-s")["state"] == "BUILDING", outcomes
    assert outcomes[-3:] == ["applied"] * 3
    [(build, _)] = service.shadows.builds()
    assert build.last_event_time is not None and build.last_event_time < clock.now


@pytest.mark.parametrize("step_s", [-300, -600], ids=["5-min-back", "10-min-back"])
def test_a_backward_step_of_the_funnel_clock_does_not_kill_a_live_lock(service: Service, clock: MutableClock,
                                                                       step_s: float) -> None:
    """A clock 10 min fast, corrected mid-job: its heartbeats look older by the step until
    the estimate forgets the fast observations (``skew.window``); the lock lives."""
    funnel = Funnel(service, clock, BOUND_S)
    funnel.start()
    for _ in range(3):
        clock.advance(INTERVAL_S - TRANSIT_S)
        funnel.beat()
    funnel.skew_s += step_s
    for _ in range(5):
        clock.advance(INTERVAL_S - TRANSIT_S)
        funnel.beat()
        assert alive(service)
    assert views(service)[0].clock_skew_s == pytest.approx(BOUND_S + step_s - TRANSIT_S)


def test_the_estimate_forgets_observations_beyond_its_window() -> None:
    clock = ClockSkew()
    for n, offset_s in enumerate((-100.0, 300.0, -100.5, -100.2)):  # one believed outlier among prompt events
        received = T0 + timedelta(seconds=60 * n)
        clock = skew.observe(clock, received + timedelta(seconds=offset_s), received, BOUND_S, window=2)
        if n == 1:
            assert clock.offset_s == 300.0  # believed: it might be a forward step
    assert clock.offset_s == -100.2 and clock.observations == 4
    assert skew.window(3) == 2 and skew.window(5) == 4 and skew.window(1) == 2


def test_a_clock_slower_than_the_bound_still_has_its_heartbeats_applied_in_order(service: Service,
                                                                                 clock: MutableClock) -> None:
    """Ordered by corrected time among the job's own events (not against the lock's grant):
    a clock a day slow gets its progress applied, though its locks die at the deadline."""
    funnel = Funnel(service, clock, -86_400)
    funnel.start()
    clock.advance(30)
    sent = funnel.stamp(clock.now)
    progress = catalog.apply(service, event(HEARTBEAT, {"job_id": "job-1", "progress_percent": 40}, time=sent))
    assert progress.status == "applied" and views(service)[0].lock.progress_percent == 40
    older = catalog.apply(service, event(HEARTBEAT, {"job_id": "job-1", "progress_percent": 10},
                                         time=sent - timedelta(seconds=20)))
    assert older.status == "ignored" and "stale" in older.detail and views(service)[0].lock.progress_percent == 40
