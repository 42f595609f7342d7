"""The chaos scenarios (``bench/chaos``, ``python -m bench.chaos --short``), asserted.

Each scenario runs once, short size, against real worker processes, real brokers (a
private ``redis-server`` per scenario, the local RabbitMQ, a private RabbitMQ node for the
broker restart) and the SQLite store; every row must show 0 lost, 0 applied twice, 0 locks
stuck past their deadline and 0 worker crashes, and the mutex history must have no
conflicting grants and strictly increasing fencing tokens. About 3 minutes in all.

The Redis restart row is asserted like the others. It used to lose events (kombu's Redis
lists pop a message before recording it as unacked) and to kill the worker (a Celery/kombu
crash on connection loss); the intake stream (``events.brokers.redis_stream``) and the patched
transport (``events.brokers.redis_kombu``) fixed both. ``python -m bench.chaos.findings
redis_restart_crash redis_restart_patched`` shows the crash, and its absence, with a plain
Celery app.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from bench.chaos import SCENARIOS
from bench.chaos.common import Row, quiet_logs, table
from tests.conftest import AMQP_URL, require_reachable

pytestmark = pytest.mark.slow

ROWS: dict[str, Row] = {}
EVENT_SCENARIOS = [name for name in SCENARIOS if name != "mutex_history"]


def row_of(name: str) -> Row:
    """Run a scenario once per session (several tests read the same row)."""
    if name not in ROWS:
        if name in ("sigkill_whole_rabbitmq", "sigterm_rabbitmq"):
            require_reachable(AMQP_URL)
        quiet_logs()
        ROWS[name] = SCENARIOS[name](broker="redis", short=True)
        print("\n" + table([ROWS[name]]) + "\n" + "\n".join(f"  - {n}" for n in ROWS[name].notes))
    return ROWS[name]


@pytest.mark.parametrize("name", EVENT_SCENARIOS)
def test_nothing_lost_nothing_applied_twice_no_stuck_lock_no_crash(name: str) -> None:
    row = row_of(name)
    if any(note.startswith("SKIPPED") for note in row.notes):
        pytest.fail(f"{name} could not run: {row.notes}")
    context = "\n".join(row.notes)
    assert row.published > 0 and row.runs > 0, context
    assert row.lost == 0, context
    assert row.applied_twice == 0, context
    assert row.stuck == 0, context
    assert row.crashes == 0, context
    assert row.applied_once == row.published, context


@pytest.mark.parametrize("name", ["broker_restart", "broker_restart_kombu"])
def test_redis_restart_really_restarted_the_broker_mid_stream(name: str) -> None:
    row = row_of(name)
    assert row.runs == 2 and row.published > 0, row.notes
    assert row.figures["worker_deaths"] == 0, row.notes


def test_sigkill_really_killed_mid_event() -> None:
    row = row_of("sigkill")
    assert row.runs >= 20, row.notes
    assert row.figures["phase:post"] + row.figures["phase:run"] > 0, "some kills must land after the effect began"
    for name in ("sigkill_whole", "sigkill_whole_kombu", "sigkill_whole_rabbitmq"):
        whole = row_of(name)
        assert whole.runs >= 4 and whole.figures["whole"] >= 4, whole.notes


@pytest.mark.parametrize("name", ["sigterm", "sigterm_kombu", "sigterm_rabbitmq"])
def test_sigterm_stopped_workers_mid_event_and_each_exited_0_within_the_bound_finishing_its_tasks(name: str) -> None:
    """Every SIGTERMed worker exited 0 within the bound (INDEXGATE_SHUTDOWN_TIMEOUT_S, the
    production 30 s, plus the cold shutdown that ends a shutdown still waiting then), no
    task in flight was cut off, and no stream entry was left for a claim. A shutdown that
    needed the cold step is in the notes ("cold shutdowns"): rare, with every task finished
    (see the README's Shutdown paragraph)."""
    row = row_of(name)
    f = row.figures
    assert row.runs >= 4 and f["term"] >= 4, row.notes
    exits = {key: n for key, n in f.items() if key.startswith("exit:")}
    assert exits == {"exit:0": row.runs + f.get("idle", 0)}, row.notes
    assert len(f["shutdown_s"]) == row.runs + f.get("idle", 0) and max(f["shutdown_s"]) <= 30 + 15, row.notes
    assert f.get("cut_off", 0) == 0, row.notes
    assert f["claimed_again"] == 0, row.notes


@pytest.mark.parametrize("name", ["sigkill_whole_kombu", "sigterm_kombu", "broker_restart_kombu"])
def test_kombu_rows_publish_through_the_kombu_door_in_both_modes(name: str) -> None:
    """Every event of these rows went in as a plain kombu publish to the topic exchange."""
    row = row_of(name)
    modes = row.figures["kombu_modes"]
    assert modes["structured"] > 0 and modes["binary"] > 0, row.notes
    assert modes["structured"] + modes["binary"] == row.published, row.notes


def test_store_outage_is_logged_once_per_outage_not_per_attempt_or_process() -> None:
    row = row_of("store_outage")
    lines = row.figures["error_lines"]
    assert len(lines) == row.figures["outages"] and all(n == 1 for n in lines), row.notes
    assert all(n > 0 for n in row.figures["published_during"]), "events must be published during each outage"


def test_hostile_dead_letters_every_bad_message_for_its_reason_and_keeps_the_invariants() -> None:
    row = row_of("hostile")
    assert row.published >= 10_000, row.notes
    assert row.figures["invariant_violations"] == 0, row.notes
    assert row.figures["misrouted"] == 0, row.notes


def test_hostile_events_never_hit_an_internal_error() -> None:
    row = row_of("hostile")
    assert row.figures["internal_errors"] == 0, row.notes


def test_mutex_history_has_no_conflicting_grants_and_increasing_tokens() -> None:
    row = row_of("mutex_history")
    f = row.figures
    assert f["conflicts"] == 0 and f["token_regressions"] == 0, row.notes
    assert f["operations"] > 1000 and f["grants"] > 20 and f["pairs"] > 100, row.notes
    assert row.runs >= 3, "the racers must have been paused past their heartbeat deadlines"
    assert row.stuck == 0 and row.crashes == 0, row.notes


def test_mutex_checker_catches_an_overlap(tmp_path) -> None:
    """The checker is not vacuous: two conflicting grants valid at once are reported."""
    import json

    from bench.chaos.mutex_history import BRANCH, check_history
    from indexgate.service import Service
    from indexgate.settings import Settings
    from indexgate.store import initialize_store
    from indexgate.schemas.records import AuditEntry, AuditKind, BranchState, Lock

    initialize_store(Settings(data_dir=tmp_path))
    service = Service.from_settings(Settings(data_dir=tmp_path))
    now = datetime.now(timezone.utc)
    locks = [Lock(branch=BRANCH, resource_type="object_type", holder=f"h{n}", job_id=f"j{n}", fencing_token=n + 1,
                  acquired_at=now, expires_at=now + timedelta(seconds=60), heartbeat_interval_s=10,
                  last_heartbeat=now) for n in range(2)]
    entries = [AuditEntry(at=now + timedelta(seconds=n), kind=AuditKind.ACQUIRED, actor="x", branch=BRANCH,
                          job_id=lock.job_id, lock_id=lock.lock_id, resource_type=lock.resource_type,
                          fencing_token=lock.fencing_token) for n, lock in enumerate(locks)]
    service.store.save(BranchState(branch=BRANCH, locks=locks, fence=2), entries)  # bypassing the rules
    (tmp_path / "snapshots-0.jsonl").write_text(json.dumps({"branch": BRANCH, "version": 1, "locks": [
        {"lock_id": l.lock_id, "expires_at": l.expires_at.isoformat(), "last_heartbeat": l.last_heartbeat.isoformat(),
         "interval": 10, "auto_release": True} for l in locks]}) + "\n")
    service.store.close()
    result = check_history(tmp_path)
    assert result["conflicts"] == 1 and result["pairs"] == 1, result
