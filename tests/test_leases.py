"""The beat lease: the pure rule, the store's compare-and-swap over both adapters (mongomock
marked as such), fenced sweeps that change nothing, and several processes racing for one
lease on a real SQLite file (never two holders at once, tokens only rising)."""

from __future__ import annotations

import multiprocessing
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from indexgate.errors import Fenced
from indexgate.leases import BEAT, Leases, claim, released
from indexgate.schemas.records import Health, ReleaseReason
from indexgate.store.base import Store
from indexgate.store.sqlite import SqliteStore
from tests.service_kit import T0, MutableClock
from tests.test_service import start
from tests.test_store_contract import MONGO_MODE, _say_which_mongo, store  # noqa: F401 (fixtures)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- the rule ------------------------------------------------------------------------------


def test_first_taker_gets_token_1_and_renewing_keeps_it() -> None:
    first = claim(None, BEAT, "a", 20, at(0))
    assert (first.holder, first.token, first.expires_at) == ("a", 1, at(20))
    renewed = claim(first, BEAT, "a", 20, at(10))
    assert (renewed.token, renewed.expires_at, renewed.renewed_at) == (1, at(30), at(10))


def test_nobody_else_takes_a_live_lease_and_the_next_taker_raises_the_token() -> None:
    lease = claim(None, BEAT, "a", 20, at(0))
    assert claim(lease, BEAT, "b", 20, at(19.999)) is None
    taken = claim(lease, BEAT, "b", 20, at(20))  # expired at exactly its expiry
    assert (taken.holder, taken.token) == ("b", 2)


def test_retaking_ones_own_expired_lease_raises_the_token() -> None:
    lease = claim(None, BEAT, "a", 20, at(0))
    assert claim(lease, BEAT, "a", 20, at(25)).token == 2  # work sent before the gap is fenced out


def test_giving_up_expires_the_lease_now_and_only_for_its_holder() -> None:
    lease = claim(None, BEAT, "a", 20, at(0))
    assert released(lease, "b", at(5)) is None and released(None, "a", at(5)) is None
    given_up = released(lease, "a", at(5))
    assert given_up.expires_at == at(5) and given_up.token == 1
    assert claim(given_up, BEAT, "b", 20, at(5)).token == 2


# --- the store: compare-and-swap, both adapters ---------------------------------------------------


def test_swap_lease_is_a_compare_and_swap(store: Store) -> None:
    assert store.lease(BEAT) is None
    first = claim(None, BEAT, "a", 20, at(0))
    assert store.swap_lease(None, first) and not store.swap_lease(None, claim(None, BEAT, "b", 20, at(0)))
    assert store.lease(BEAT) == first
    renewed = claim(first, BEAT, "a", 20, at(10))
    assert store.swap_lease(first, renewed)
    stale = claim(first, BEAT, "b", 20, at(25))  # decided from a lease that has changed since
    assert not store.swap_lease(first, stale) and store.lease(BEAT) == renewed
    assert store.lease("other") is None


def test_leases_take_renew_wait_and_take_over(store: Store) -> None:
    clock = MutableClock()
    leases = Leases(store, clock)
    assert leases.take(BEAT, "a", 20).token == 1
    clock.advance(5)
    assert leases.take(BEAT, "b", 20) is None and leases.take(BEAT, "a", 20).token == 1
    clock.advance(19.5)  # a renewed at 5: alive until 25
    assert leases.take(BEAT, "b", 20) is None
    clock.advance(0.5)
    assert leases.take(BEAT, "b", 20).token == 2 and leases.current(BEAT).holder == "b"
    assert leases.give_up(BEAT, "b") and not leases.give_up(BEAT, "a")
    assert leases.take(BEAT, "a", 20).token == 3


# --- fences: a sweep sent under a lost lease changes nothing -------------------------------------


def test_a_fenced_out_sweep_changes_nothing_and_the_current_one_works(service, clock) -> None:
    start(service, "job-1", "object_type", heartbeat_interval_s=10)
    clock.advance(120)  # past its heartbeat deadline (30 s), not its TTL: due for the heartbeat sweep
    old = service.leases.take(BEAT, "beat-a", 20)
    clock.advance(30)
    new = service.leases.take(BEAT, "beat-b", 20)
    assert (old.token, new.token) == (1, 2)
    before = service.list_locks()
    for sweep in (lambda f: service.sweep([ReleaseReason.HEARTBEAT_MISSED], f), service.refresh_health,
                  service.shadows.sweep, service.retention.run, lambda f: service.relay_outbox(fence=f)):
        with pytest.raises(Fenced, match="token 1, which is no longer current .token 2, held by beat-b"):
            sweep(service.leases.fence(BEAT, old.token))
    assert service.list_locks() == before and before[0].health is not Health.HEALTHY
    released_ = service.sweep([ReleaseReason.HEARTBEAT_MISSED], service.leases.fence(BEAT, new.token))
    assert [e.reason for e in released_] == [ReleaseReason.HEARTBEAT_MISSED] and service.list_locks() == []


def test_a_sweep_without_a_token_is_not_fenced(service, clock) -> None:
    start(service, "job-1", "object_type", heartbeat_interval_s=10)
    clock.advance(120)
    service.leases.take(BEAT, "beat-a", 20)
    assert len(service.sweep([ReleaseReason.HEARTBEAT_MISSED], service.leases.fence(BEAT, None))) == 1


# --- processes racing for one lease on a real SQLite file ----------------------------------------


def _racer(path: str, name: str, until: float, out) -> None:
    """Take or renew every 10 ms; after a few renewals, fall silent past the TTL (a pause)."""
    leases = Leases(SqliteStore(Path(path)))
    held, renewals = [], 0
    while time.time() < until:
        lease = leases.take(BEAT, name, 0.05)
        if lease is not None:
            held.append((lease.token, name, lease.renewed_at.timestamp(), lease.expires_at.timestamp()))
            renewals += 1
        if renewals >= 5:
            renewals = 0
            time.sleep(0.08)
        time.sleep(0.01)
    out.put(held)


@pytest.mark.slow
def test_racing_processes_never_hold_the_lease_at_once(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "race.db")
    store.initialize()
    out = multiprocessing.get_context("spawn").Queue()
    until = time.time() + 4
    procs = [multiprocessing.get_context("spawn").Process(target=_racer, args=(str(store.path), f"r{i}", until, out))
             for i in range(4)]
    for proc in procs:
        proc.start()
    held = [grant for _ in procs for grant in out.get(timeout=60)]
    for proc in procs:
        proc.join(timeout=30)
    by_token: dict[int, set[str]] = {}
    for token, name, _, _ in held:
        by_token.setdefault(token, set()).add(name)
    assert all(len(names) == 1 for names in by_token.values()), by_token  # one holder per token
    spans = sorted((token, min(s for t, _, s, _ in held if t == token), max(e for t, _, _, e in held if t == token))
                   for token in by_token)
    for (_, _, end), (_, next_start, _) in zip(spans, spans[1:]):
        assert next_start >= end - 0.001, spans  # the next holder took it only after the last renewal expired
    assert len(by_token) > 10  # the lease changed hands again and again


# --- `indexgate beat status`, a real subprocess ----------------------------------------------------


def test_beat_status_exit_1_without_a_holder_0_with_one(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from indexgate.settings import Settings
    from indexgate.store import initialize_store
    from indexgate.testing.processes import PROJECT_ROOT, settings_env

    settings = Settings(data_dir=tmp_path, store_url=None, broker_url=None)
    initialize_store(settings)
    env = settings_env(settings)

    def status(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "indexgate.cli", "beat", "status", *args], env=env,
                              capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60)

    never = status()
    assert never.returncode == 1 and "no beat has ever held the lease" in never.stdout
    store = SqliteStore(tmp_path / "indexgate.db")
    Leases(store).take(BEAT, "host-a:7", 600)
    held = status("--json")
    answer = json.loads(held.stdout)
    assert held.returncode == 0 and answer["held"] and answer["lease"]["holder"] == "host-a:7"
    assert answer["lease"]["token"] == 1 and 0 < answer["expires_in_s"] <= 600
    Leases(store).give_up(BEAT, "host-a:7")
    store.close()
    gone = status()
    assert gone.returncode == 1 and "NOT held" in gone.stdout and "host-a:7" in gone.stdout
