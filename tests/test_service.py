"""``Service`` over a real SQLite store, fed through the catalog and the intake, on a test clock."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from indexgate.events import catalog
from indexgate.events.decode import STRUCTURED, IncomingEvent, RawMessage
from indexgate.events.intake import ingest
from indexgate.events.publisher import encode, funnel_event
from indexgate.errors import LockNotFound, StoreUnavailable, VersionConflict
from indexgate.commits import CAS_ATTEMPTS
from indexgate.service import Service
from indexgate.settings import Settings
from indexgate.store.sqlite import SqliteStore
from indexgate.schemas.records import AuditKind, JobStatus, ReleaseReason
from tests.service_kit import POLICY, T0, MutableClock, Outbox  # noqa: F401 (re-exported for other tests)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "funnel-events"
BRANCH = "feature/user-schema"
STARTED, HEARTBEAT, COMPLETED = "com.oms.indexing.started", "com.oms.indexing.heartbeat", "com.oms.indexing.completed"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, store_url=None, broker_url=None, source_allowlist=[], max_event_bytes=1_048_576)


_ids = iter(range(10**6))


def event(type_: str, data: dict, *, time: datetime | None = T0, event_id: str | None = None,
          source: str = "funnel-service") -> IncomingEvent:
    return IncomingEvent(id=event_id or f"e-{next(_ids)}", source=source, type=type_, time=time, data=data)


def start(service: Service, job: str = "job-1", *types: str, time: datetime | None = T0, **data):
    payload = {"job_id": job, "branch": BRANCH, "resource_types": list(types), **data}
    return catalog.apply(service, event(STARTED, payload, time=time))


def beat(service: Service, job: str = "job-1", time: datetime | None = T0, **data):
    return catalog.apply(service, event(HEARTBEAT, {"job_id": job, **data}, time=time))


def fixture_raw(name: str) -> RawMessage:
    return RawMessage.build({}, STRUCTURED, (FIXTURES / name).read_bytes())


def only_lock(service: Service):
    (view,) = service.list_locks()
    return view.lock


def audit_kinds(store: SqliteStore) -> list[AuditKind]:
    return [entry.kind for entry in reversed(store.audit(1000))]


# --- events through the catalog and the intake ----------------------------------------


def test_fixture_started_then_seed_heartbeat_through_ingest(service, settings, store, clock, outbox):
    outcome = ingest(service, settings, fixture_raw("indexing-started-traditional.json"))
    assert outcome.status == "applied"
    lock = only_lock(service)
    assert (lock.job_id, lock.resource_type, lock.holder) == ("job-42", "object_type", "funnel-service")
    assert lock.expires_at == T0 + timedelta(seconds=POLICY.max_ttl_s)  # ttl_s 14400 capped at max TTL
    assert lock.heartbeat_interval_s == 120
    clock.advance(300)  # inside 3 x 120 s; the fixture's 10:30 event time is ahead, so it counts as now
    assert ingest(service, settings, fixture_raw("seed-heartbeat-progress-info.json")).status == "applied"
    lock = only_lock(service)
    assert lock.progress_percent == 75 and lock.last_heartbeat == T0 + timedelta(seconds=300)
    assert outbox.kinds() == [AuditKind.ACQUIRED] and store.unpublished() == []


def test_shadow_start_takes_no_lock(service, settings, store):
    shadow = ingest(service, settings, fixture_raw("indexing-started-shadow.json"))
    assert shadow.status != "dead_lettered" and store.dead_letters() == []
    assert service.list_locks() == [] and service.check(BRANCH, "object_type").allowed


def test_binary_mode_message_is_ingested(service, settings):
    message = encode(funnel_event(STARTED, {"job_id": "job-b", "branch": BRANCH}, source="funnel-service",
                                  event_id="bin-1", time=T0), "binary")
    outcome = ingest(service, settings, RawMessage.build(message.headers, message.content_type, message.body))
    assert outcome.status == "applied" and only_lock(service).resource_type is None


def test_duplicate_event_changes_nothing(service, store, outbox):
    first = event(STARTED, {"job_id": "job-1", "branch": BRANCH}, event_id="same")
    assert catalog.apply(service, first).status == "applied"
    before = (store.load(BRANCH).model_dump(), len(store.audit(1000)), len(outbox.sent))
    again = catalog.apply(service, event(STARTED, {"job_id": "job-9", "branch": "other"}, event_id="same"))
    assert again.status == "duplicate" and again.audit == []
    assert (store.load(BRANCH).model_dump(), len(store.audit(1000)), len(outbox.sent)) == before
    assert store.load("other") is None


def test_stale_heartbeat_is_ignored(service, store, clock):
    start(service, "job-1", "object_type")
    clock.advance(60)
    assert beat(service, time=T0 + timedelta(seconds=60), progress_percent=50).status == "applied"
    clock.advance(10)
    stale = beat(service, time=T0 + timedelta(seconds=30), progress_percent=10)
    assert stale.status == "ignored" and "stale" in stale.detail
    lock = only_lock(service)
    assert lock.progress_percent == 50 and lock.last_heartbeat == T0 + timedelta(seconds=60)
    assert audit_kinds(store)[-1] is AuditKind.IGNORED


@pytest.mark.parametrize(("type_", "data"), [(HEARTBEAT, {"job_id": "ghost"}), (COMPLETED, {"job_id": "ghost"})])
def test_event_for_unknown_job_is_recorded(service, store, outbox, type_, data):
    outcome = catalog.apply(service, event(type_, data))
    assert outcome.status == "unknown_job" and "ghost" in outcome.detail
    (entry,) = store.audit(10)
    assert entry.kind is AuditKind.UNKNOWN_JOB and entry.job_id == "ghost"
    assert store.unpublished() == [] and outbox.sent == []  # recorded, not announced


def test_conflicting_start_is_refused_into_the_outbox(store, clock):
    quiet = Service(store, POLICY, clock=clock)  # no notify: the outbox keeps everything
    start(quiet, "job-1", "object_type")
    outcome = start(quiet, "job-2", "object_type", "link_type")
    assert outcome.status == "refused"
    assert [lock.job_id for lock in (v.lock for v in quiet.list_locks())] == ["job-1"]
    refused = [entry for entry in store.unpublished() if entry.kind is AuditKind.REFUSED]
    assert [entry.job_id for entry in refused] == ["job-2"]
    assert store.load(BRANCH).job("job-2").status is JobStatus.REFUSED


def test_notify_receives_refusal_acquire_and_release_then_marks_them_published(service, store, outbox):
    start(service, "job-1", "object_type")
    start(service, "job-2", "object_type")
    catalog.apply(service, event(COMPLETED, {"job_id": "job-1", "records_indexed": 10}))
    assert outbox.kinds() == [AuditKind.ACQUIRED, AuditKind.REFUSED, AuditKind.RELEASED]
    assert outbox.sent[2].reason == ReleaseReason.COMPLETED and outbox.sent[2].detail["result"]["record_count"] == 10
    assert store.unpublished() == []
    assert all(entry.published for entry in store.audit(100))


def test_completion_payload_cannot_overwrite_audit_detail(service, outbox):
    start(service, "job-1", "object_type", service_name="builder-a")
    catalog.apply(service, event(COMPLETED, {"job_id": "job-1", "holder": "forged", "expires_at": "never"}))
    released = outbox.sent[-1]
    assert released.kind is AuditKind.RELEASED
    assert released.detail["holder"] == "builder-a" and released.detail["expires_at"] != "never"


def test_failed_notify_leaves_the_outbox_for_the_relay(service, store, outbox):
    outbox.failing = True
    assert start(service, "job-1", "object_type").status == "applied"  # the commit stands
    pending = store.unpublished()
    assert [entry.kind for entry in pending] == [AuditKind.ACQUIRED] and outbox.sent == []
    outbox.failing = False
    assert service.relay_outbox() == 1
    assert [entry.entry_id for entry in outbox.sent] == [pending[0].entry_id]
    assert store.unpublished() == [] and service.relay_outbox() == 0


# --- dead letters and failures --------------------------------------------------------


def test_malformed_message_is_dead_lettered_whole(service, settings, store):
    raw = RawMessage.build({"x-id": "1"}, STRUCTURED, "{not json", routing_key=STARTED)
    outcome = ingest(service, settings, raw)
    assert outcome.status == "dead_lettered" and "not JSON" in outcome.detail
    (letter,) = store.dead_letters()
    assert letter.reason == outcome.detail and letter.body == "{not json"
    assert (letter.routing_key, letter.content_type, letter.headers) == (STARTED, STRUCTURED, {"x-id": "1"})


def test_invalid_payload_and_non_utf8_body_are_dead_lettered(service, settings, store):
    bad = json.loads((FIXTURES / "indexing-started-traditional.json").read_text()) | {"data": {"job_id": "j"}}
    assert ingest(service, settings, RawMessage.build({}, STRUCTURED, json.dumps(bad))).status == "dead_lettered"
    binary_body = b"\xff\xfe\x00garbage"
    ingest(service, settings, RawMessage.build({}, STRUCTURED, binary_body))
    newest, older = store.dead_letters()
    assert "branch" in older.reason
    assert newest.body_encoding == "base64"
    assert RawMessage(body=newest.body, body_encoding=newest.body_encoding).body_bytes() == binary_body
    assert service.list_locks() == []


def test_unexpected_handler_error_is_dead_lettered_not_raised(service, settings, store, monkeypatch):
    def explode(*_args):
        raise RuntimeError("boom")

    monkeypatch.setattr(Service, "start", explode)
    outcome = ingest(service, settings, fixture_raw("indexing-started-traditional.json"))
    assert outcome.status == "dead_lettered"
    assert outcome.detail == "internal error: RuntimeError: boom"
    (letter,) = store.dead_letters()
    assert letter.reason == outcome.detail and json.loads(letter.body)["id"] == "start-1c9e"
    assert not store.seen("funnel-service|start-1c9e")  # a fixed worker may replay it


def test_route_handler_error_is_dead_lettered(service, settings, store, monkeypatch):
    route = catalog.ROUTES[STARTED]
    monkeypatch.setitem(catalog.ROUTES, STARTED, catalog.Route(route.model, lambda *_: 1 / 0, route.summary, route.kind))
    outcome = ingest(service, settings, fixture_raw("indexing-started-traditional.json"))
    assert outcome.status == "dead_lettered" and "ZeroDivisionError" in outcome.detail


def test_operator_error_while_applying_is_dead_lettered_as_cannot_apply(service, settings, store, monkeypatch):
    def impossible(*_args):
        raise LockNotFound("no lock xyz")

    monkeypatch.setattr(Service, "heartbeat", impossible)
    outcome = ingest(service, settings, fixture_raw("seed-heartbeat-progress-info.json"))
    assert outcome.status == "dead_lettered" and outcome.detail == "cannot be applied: no lock xyz"
    assert [letter.reason for letter in store.dead_letters()] == [outcome.detail]


@pytest.fixture
def broken_service(tmp_path: Path, clock) -> Service:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store's folder should be")
    return Service(SqliteStore(blocker / "store.db"), POLICY, clock=clock)


def test_store_unavailable_propagates_out_of_ingest(broken_service, settings):
    with pytest.raises(StoreUnavailable, match="unavailable"):
        ingest(broken_service, settings, fixture_raw("indexing-started-traditional.json"))
    with pytest.raises(StoreUnavailable):  # even the dead-letter path does not swallow it
        ingest(broken_service, settings, RawMessage.build({}, STRUCTURED, "{not json"))


def test_check_raises_store_unavailable(broken_service):
    with pytest.raises(StoreUnavailable):
        broken_service.check(BRANCH, "object_type")


# --- sweeps, operators, queries -------------------------------------------------------


def test_sweep_releases_dead_locks_with_their_reasons_once(service, store, clock, outbox):
    start(service, "job-ttl", "object_type", ttl_s=100)
    start(service, "job-hb", "link_type", heartbeat_interval_s=30)
    start(service, "job-live", "action_type")
    clock.advance(90)
    beat(service, "job-ttl", time=clock.now)
    beat(service, "job-live", time=clock.now)
    clock.advance(60)  # t = 150: job-ttl past TTL, job-hb past 3 x 30 s
    released = service.sweep([ReleaseReason.TTL_EXPIRED, ReleaseReason.HEARTBEAT_MISSED])
    assert {(entry.job_id, entry.reason) for entry in released} == {
        ("job-ttl", ReleaseReason.TTL_EXPIRED), ("job-hb", ReleaseReason.HEARTBEAT_MISSED)}
    assert [v.lock.job_id for v in service.list_locks()] == ["job-live"]
    assert service.sweep([ReleaseReason.TTL_EXPIRED, ReleaseReason.HEARTBEAT_MISSED]) == []
    assert outbox.kinds().count(AuditKind.RELEASED) == 2 and store.unpublished() == []
    assert store.load(BRANCH).job("job-hb").status is JobStatus.ENDED


def test_extend_and_force_release_by_lock_id(service, store, clock):
    start(service, "job-1", "object_type")
    lock_id = only_lock(service).lock_id
    extended = service.extend(lock_id, 600, "ops", "long rebuild")
    assert extended.status == "applied" and extended.audit[0].kind is AuditKind.EXTENDED
    assert service.show(lock_id).lock.expires_at == T0 + timedelta(seconds=3600 + 600)
    clock.advance(5)
    forced = service.force_release(lock_id, "ops", "stuck")
    assert forced.status == "applied" and forced.audit[0].reason == ReleaseReason.FORCED
    assert service.list_locks() == [] and service.check(BRANCH, "object_type").allowed
    assert store.load(BRANCH).job("job-1").outcome == "FORCED"
    assert beat(service, "job-1", time=clock.now).status == "ignored"  # the job is over
    with pytest.raises(LockNotFound):
        service.extend(lock_id, 60, "ops", "too late")
    with pytest.raises(LockNotFound):
        service.force_release("no-such-lock", "ops", "why")


def test_summary_counts_by_health(service, clock):
    start(service, "job-old", "object_type")
    clock.advance(100)
    start(service, "job-mid", "link_type")
    clock.advance(70)
    start(service, "job-new", "action_type")
    clock.advance(30)  # since last beat: old 200 s (dead), mid 100 s (late), new 30 s
    assert service.summary() == {"healthy": 1, "warning": 1, "critical": 1, "total": 3}


def test_check_denies_then_allows(service, clock):
    assert service.check(BRANCH, "object_type").allowed  # no state at all
    start(service, "job-1", "object_type")
    denied = service.check(BRANCH, "object_type")
    assert not denied.allowed and "job-1" in denied.message
    assert service.check(BRANCH, "link_type").allowed
    assert service.check(BRANCH, "object_type", "draft").allowed
    clock.advance(180)  # heartbeat deadline: dead without a sweep
    assert service.check(BRANCH, "object_type").allowed


# --- compare-and-swap -----------------------------------------------------------------


def test_mutate_retries_after_a_version_conflict(service, store, monkeypatch):
    real_save, calls = store.save, []

    def save_losing_once(state, audit, inbox_key=None):
        calls.append(state.version)
        if len(calls) == 1:
            raise VersionConflict("lost a race")
        return real_save(state, audit, inbox_key)

    monkeypatch.setattr(store, "save", save_losing_once)
    outcome = start(service, "job-1", "object_type")
    assert outcome.status == "applied" and len(calls) == 2
    assert [v.lock.job_id for v in service.list_locks()] == ["job-1"]
    assert audit_kinds(store) == [AuditKind.ACQUIRED]  # the lost attempt left no trace


def test_mutate_gives_up_after_the_attempt_budget(service, settings, store, monkeypatch):
    def always_lose(*_args, **_kw):
        raise VersionConflict("lost a race")

    monkeypatch.setattr(store, "save", always_lose)
    with pytest.raises(VersionConflict, match=f"{CAS_ATTEMPTS} attempts"):
        start(service, "job-1")
    with pytest.raises(VersionConflict):  # a StoreError: the task is retried, not dead-lettered
        ingest(service, settings, fixture_raw("indexing-started-traditional.json"))
    assert store.dead_letters() == []


@pytest.fixture
def pair(tmp_path, clock):
    """Two services, each with its own connection to one SQLite file (two workers)."""
    stores = [SqliteStore(tmp_path / "shared.db") for _ in range(2)]
    stores[0].initialize()
    yield [Service(store_, POLICY, clock=clock) for store_ in stores]
    for store_ in stores:
        store_.close()


def lose_first_race(monkeypatch, service: Service, competitor) -> list:
    """``competitor`` commits between ``service``'s first load and its save."""
    real_load, loads = service.store.load, []

    def load(branch):
        state = real_load(branch)
        loads.append(state)
        if len(loads) == 1:
            competitor()
        return state

    monkeypatch.setattr(service.store, "load", load)
    return loads


def test_two_services_on_one_file_never_grant_conflicting_locks(pair, monkeypatch):
    service_a, service_b = pair
    start(service_a, "job-0", "link_type")  # the branch exists: the race is on the UPDATE path
    loads = lose_first_race(monkeypatch, service_a, lambda: start(service_b, "job-b", "object_type"))
    assert start(service_a, "job-a", "object_type").status == "refused"
    assert loads[1].version == loads[0].version + 1
    holders = sorted((v.lock.job_id, v.lock.resource_type) for v in service_b.list_locks())
    assert holders == [("job-0", "link_type"), ("job-b", "object_type")]
    assert service_b.store.load(BRANCH).job("job-a").status is JobStatus.REFUSED


def test_two_services_racing_on_a_new_branch(pair, monkeypatch):
    service_a, service_b = pair
    loads = lose_first_race(monkeypatch, service_a, lambda: start(service_b, "job-b"))
    assert start(service_a, "job-a").status == "refused" and loads[0] is None  # the INSERT path
    assert [(v.lock.job_id, v.lock.fencing_token) for v in service_b.list_locks()] == [("job-b", 1)]


def test_two_concurrent_deliveries_of_one_event_commit_once(service, store) -> None:
    """Both deliveries pass the early `seen` check (they race); the inbox key, inserted in
    the same transaction as the effect, lets only one commit."""
    from indexgate.service import Origin
    from indexgate.schemas.payloads import StartedData

    origin = Origin(actor="funnel", key="funnel|same-event")
    first = service.start(StartedData(job_id="job-a", branch=BRANCH, resource_types=["object_type"]), origin)
    second = service.start(StartedData(job_id="job-b", branch=BRANCH, resource_types=["link_type"]), origin)
    assert first.status == "applied" and second.status == "duplicate"
    caused = [e for e in store.audit(50) if e.cause == "funnel|same-event"]
    assert {e.job_id for e in caused} == {"job-a"}
    assert [v.lock.job_id for v in service.list_locks(BRANCH)] == ["job-a"]
