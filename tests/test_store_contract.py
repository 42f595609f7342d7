"""One contract suite for every store adapter (``indexgate.store.base.Store``).

``sqlite`` runs on a temporary file. ``mongo`` runs against the live server named by
``MONGODB_URL`` (a fresh database per test, dropped afterwards) and otherwise against
mongomock -- the parameter id (``mongo[mongomock]`` / ``mongo[live]``) and a line in the
session output say which, because mongomock proves the adapter's logic, not MongoDB's.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from indexgate.errors import DuplicateEvent, StoreUnavailable, VersionConflict
from indexgate.store.base import Store
from indexgate.store.mongo import MongoStore
from indexgate.store.sqlite import SqliteStore
from indexgate.testing.mongomock_store import MongomockStore
from indexgate.schemas.records import (
    AuditEntry,
    AuditKind,
    BranchState,
    DeadLetter,
    EarlyEnd,
    JobRecord,
    JobStatus,
    Lock,
    ReleaseReason,
)
from indexgate.schemas.shadows import IndexPointer, IndexState, ShadowBuild, ShadowState

MONGODB_URL = os.environ.get("MONGODB_URL")
MONGO_MODE = "live" if MONGODB_URL else "mongomock"
NOT_LIVE = "MongoDB contract tests ran against mongomock, not a live server (set MONGODB_URL to run them live)"
T0 = datetime(2024, 5, 17, 9, 30, 15, 123456, tzinfo=timezone.utc)  # microseconds on purpose


@pytest.fixture(scope="module", autouse=True)
def _say_which_mongo(pytestconfig: pytest.Config) -> None:
    reporter = pytestconfig.pluginmanager.getplugin("terminalreporter")
    line = f"MongoDB contract tests ran against the live server at {_host(MONGODB_URL)}" if MONGODB_URL else NOT_LIVE
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():  # straight to the terminal, even with -q
        reporter.ensure_newline()
        reporter.write_line(line, yellow=not MONGODB_URL, bold=True)


def _host(url: str | None) -> str:
    return MongoStore.from_url(url).host if url else "-"


def _mongo_store() -> Iterator[MongoStore]:
    """A live server's fresh database (dropped afterwards) or an in-memory mongomock one."""
    if MONGODB_URL:
        adapter = MongoStore.from_url(MONGODB_URL, database=f"indexgate_test_{uuid.uuid4().hex[:12]}")
    else:
        adapter = MongomockStore.from_url("mongomock://")
    adapter.initialize()
    yield adapter
    if MONGODB_URL:
        adapter._db().client.drop_database(adapter.database)
    adapter.close()


@pytest.fixture(params=["sqlite", f"mongo[{MONGO_MODE}]"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        sqlite = SqliteStore(tmp_path / "store.db")
        sqlite.initialize()
        yield sqlite
        sqlite.close()
    else:
        yield from _mongo_store()


# --- helpers ------------------------------------------------------------------------


def a_lock(branch: str, job_id: str = "job-1", resource_type: str | None = "docs", token: int = 1) -> Lock:
    return Lock(branch=branch, resource_type=resource_type, holder="indexer", job_id=job_id, reason="indexing",
                fencing_token=token, acquired_at=T0, expires_at=T0 + timedelta(hours=4),
                heartbeat_interval_s=120.0, last_heartbeat=T0 + timedelta(seconds=30), progress_percent=12.5)


def a_state(branch: str = "main", job_id: str = "job-1", locked: bool = True) -> BranchState:
    job = JobRecord(job_id=job_id, branch=branch, status=JobStatus.ACTIVE, holder="indexer", last_event_time=T0)
    return BranchState(branch=branch, fence=1, locks=[a_lock(branch, job_id)] if locked else [], jobs=[job])


def an_entry(branch: str | None = "main", minute: int = 0, kind: AuditKind = AuditKind.ACQUIRED,
             published: bool = False) -> AuditEntry:
    return AuditEntry(at=T0 + timedelta(minutes=minute), kind=kind, actor="funnel", branch=branch,
                      job_id="job-1", fencing_token=1, reason=f"step {minute}", detail={"n": minute},
                      published=published)


def a_letter(n: int) -> DeadLetter:
    return DeadLetter(at=T0 + timedelta(seconds=n), reason=f"bad {n}", routing_key="funnel.x",
                      headers={"h": str(n)}, body=f"body {n}")


def saved(store: Store, state: BranchState, *audit: AuditEntry, key: str | None = None) -> BranchState:
    """Save and return what the caller now holds (state at the new version)."""
    version = store.save(state, list(audit), key)
    return state.model_copy(update={"version": version})


def a_build(branch: str = "main", index_type: str = "search", n: int = 1,
            state: ShadowState = ShadowState.BUILT) -> ShadowBuild:
    return ShadowBuild(shadow_index_id=f"shadow-{n}", job_id=f"build-job-{n}", branch=branch, index_type=index_type,
                       resource_types=["docs", "code"], state=state, holder="indexer", created_at=T0,
                       completed_at=T0 + timedelta(minutes=n), heartbeat_interval_s=60.0,
                       last_heartbeat=T0 + timedelta(seconds=n), build_progress_percent=100.0, record_count=10 * n,
                       index_size_bytes=1024 * n, location=f"/idx/shadow-{n}", switch_fencing_token=n)


def a_pointer(n: int) -> IndexPointer:
    return IndexPointer(shadow_index_id=f"shadow-{n}", location=f"/idx/shadow-{n}",
                        switched_at=T0 + timedelta(hours=n), fencing_token=n, record_count=10 * n)


def an_index(branch: str = "main", index_type: str = "search", *builds: ShadowBuild) -> IndexState:
    return IndexState(branch=branch, index_type=index_type, builds=list(builds) or [a_build(branch, index_type)])


def saved_index(store: Store, state: IndexState, *audit: AuditEntry, key: str | None = None) -> IndexState:
    """``saved`` for the index aggregate."""
    version = store.save_index(state, list(audit), key)
    return state.model_copy(update={"version": version})


# --- aggregates ---------------------------------------------------------------------


def test_load_of_unknown_branch_is_none(store: Store) -> None:
    assert store.load("nowhere") is None


def test_save_then_load_round_trips_every_field(store: Store) -> None:
    state = a_state()
    assert store.save(state, [an_entry()]) == 1
    loaded = store.load("main")
    assert loaded == state.model_copy(update={"version": 1})
    assert loaded is not None
    lock = loaded.locks[0]
    assert lock.acquired_at == T0 and lock.acquired_at.utcoffset() == timedelta(0)
    assert lock.acquired_at.microsecond == 123456
    assert loaded.jobs[0].last_event_time == T0


def test_stale_version_raises_and_leaves_stored_state_unchanged(store: Store) -> None:
    v1 = saved(store, a_state())
    v2 = saved(store, v1.model_copy(update={"fence": 2}))
    assert v2.version == 2
    with pytest.raises(VersionConflict):
        store.save(v1.model_copy(update={"fence": 99, "locks": []}), [an_entry(minute=9)], "src|stale")
    assert store.load("main") == v2
    assert [e.reason for e in store.audit()] == []  # the loser's audit entry was not written
    assert not store.seen("src|stale")


def test_two_writers_from_the_same_version_exactly_one_wins(store: Store) -> None:
    base = saved(store, a_state())
    first = store.load("main")
    second = store.load("main")
    assert first == second == base
    assert first is not None and second is not None
    outcomes = []
    for writer, fence in ((first, 10), (second, 20)):
        try:
            outcomes.append(store.save(writer.model_copy(update={"fence": fence}), [an_entry(minute=fence)]))
        except VersionConflict:
            outcomes.append("conflict")
    assert outcomes == [2, "conflict"]
    stored = store.load("main")
    assert stored is not None and stored.fence == 10 and stored.version == 2
    assert [e.reason for e in store.audit()] == ["step 10"]


def test_insert_race_at_version_zero_one_wins(store: Store) -> None:
    assert store.save(a_state(job_id="job-a"), [an_entry(minute=1)]) == 1
    with pytest.raises(VersionConflict):
        store.save(a_state(job_id="job-b"), [an_entry(minute=2)])
    stored = store.load("main")
    assert stored is not None and [j.job_id for j in stored.jobs] == ["job-a"]
    assert store.branch_of_job("job-b") is None
    assert [e.reason for e in store.audit()] == ["step 1"]


# --- index aggregates ---------------------------------------------------------------


def test_load_index_of_unknown_key_is_none(store: Store) -> None:
    assert store.load_index("nowhere|search") is None
    assert store.index_of("shadow-1") is None
    assert store.indexes() == []


def test_save_index_then_load_index_round_trips_every_field(store: Store) -> None:
    old, new = a_build(n=1, state=ShadowState.CLEANUP), a_build(n=2, state=ShadowState.ACTIVE)
    state = an_index("main", "search", old, new).model_copy(
        update={"active": a_pointer(2), "backups": [a_pointer(1)], "pointer_token": 2})
    assert state.key == "main|search"
    assert store.save_index(state, [an_entry(kind=AuditKind.SWITCHED)]) == 1
    loaded = store.load_index("main|search")
    assert loaded == state.model_copy(update={"version": 1})
    assert loaded is not None and loaded.active is not None
    switched_at = loaded.active.switched_at
    assert switched_at == T0 + timedelta(hours=2) and switched_at.utcoffset() == timedelta(0)
    build = loaded.builds[1]
    assert build.state is ShadowState.ACTIVE and build.created_at == T0 and build.created_at.microsecond == 123456
    assert build.completed_at is not None and build.completed_at.utcoffset() == timedelta(0)
    assert build.switched_at is None and [p.shadow_index_id for p in loaded.backups] == ["shadow-1"]
    assert store.load("main") is None  # a separate aggregate: no branch document appears


def test_save_index_stale_version_raises_and_leaves_stored_state_unchanged(store: Store) -> None:
    v1 = saved_index(store, an_index())
    v2 = saved_index(store, v1.model_copy(update={"pointer_token": 2}))
    assert v2.version == 2
    with pytest.raises(VersionConflict):
        store.save_index(v1.model_copy(update={"pointer_token": 99, "builds": []}), [an_entry(minute=9)], "src|stale")
    assert store.load_index("main|search") == v2
    assert store.audit() == []  # the loser's audit entry was not written
    assert not store.seen("src|stale")


def test_save_index_two_writers_from_the_same_version_exactly_one_wins(store: Store) -> None:
    base = saved_index(store, an_index())
    first, second = store.load_index("main|search"), store.load_index("main|search")
    assert first == second == base
    assert first is not None and second is not None
    outcomes: list[int | str] = []
    for writer, token in ((first, 10), (second, 20)):
        try:
            outcomes.append(store.save_index(writer.model_copy(update={"pointer_token": token}),
                                             [an_entry(minute=token)]))
        except VersionConflict:
            outcomes.append("conflict")
    assert outcomes == [2, "conflict"]
    stored = store.load_index("main|search")
    assert stored is not None and stored.pointer_token == 10 and stored.version == 2
    assert [e.reason for e in store.audit()] == ["step 10"]


def test_save_index_insert_race_at_version_zero_one_wins(store: Store) -> None:
    assert store.save_index(an_index("main", "search", a_build(n=1)), [an_entry(minute=1)]) == 1
    with pytest.raises(VersionConflict):
        store.save_index(an_index("main", "search", a_build(n=2)), [an_entry(minute=2)], "src|late")
    stored = store.load_index("main|search")
    assert stored is not None and [b.shadow_index_id for b in stored.builds] == ["shadow-1"]
    assert store.index_of("shadow-2") is None and store.index_of("build-job-2") is None
    assert [e.reason for e in store.audit()] == ["step 1"] and not store.seen("src|late")


def test_index_of_finds_builds_by_job_id_and_by_shadow_id(store: Store) -> None:
    state = saved_index(store, an_index("main", "search", a_build(n=1)))
    saved_index(store, state.model_copy(update={"builds": [*state.builds, a_build(n=2)]}))
    saved_index(store, an_index("dev", "vectors", a_build("dev", "vectors", n=3)))
    saved(store, a_state("main", job_id="lock-job"))
    assert store.index_of("build-job-1") == store.index_of("shadow-1") == "main|search"
    assert store.index_of("build-job-2") == store.index_of("shadow-2") == "main|search"
    assert store.index_of("build-job-3") == store.index_of("shadow-3") == "dev|vectors"
    assert store.index_of("lock-job") is None and store.branch_of_job("build-job-1") is None  # separate indexes
    assert store.index_of("shadow-4") is None


def test_indexes_returns_every_aggregate_sorted_by_key(store: Store) -> None:
    saved_index(store, an_index("zeta", "search", a_build("zeta", "search", n=1)))
    saved_index(store, an_index("main", "vectors", a_build("main", "vectors", n=2)))
    alpha = saved_index(store, an_index("alpha", "search", a_build("alpha", "search", n=3)))
    main = saved_index(store, an_index("main", "search", a_build("main", "search", n=4)))
    saved_index(store, main.model_copy(update={"builds": []}))  # empty aggregates are still listed
    listed = store.indexes()
    assert [s.key for s in listed] == ["alpha|search", "main|search", "main|vectors", "zeta|search"]
    assert listed[0] == alpha and listed[1].version == 2 and listed[1].builds == []


def test_save_index_writes_audit_entries_and_inbox_key(store: Store) -> None:
    state = saved_index(store, an_index(), an_entry(minute=1, kind=AuditKind.SHADOW_STATE), key="src|b1")
    saved_index(store, state.model_copy(update={"active": a_pointer(1)}),
                an_entry(minute=2, kind=AuditKind.SWITCHED), an_entry(None, 3, AuditKind.IGNORED, published=True),
                key="src|b2")
    assert [(e.reason, e.kind) for e in store.audit()] == [
        ("step 3", AuditKind.IGNORED), ("step 2", AuditKind.SWITCHED), ("step 1", AuditKind.SHADOW_STATE)]
    assert [e.reason for e in store.audit(branch="main")] == ["step 2", "step 1"]
    assert [e.reason for e in store.unpublished()] == ["step 1", "step 2"]
    assert store.seen("src|b1") and store.seen("src|b2") and not store.seen("src|b3")


# --- audit / outbox -----------------------------------------------------------------


def test_audit_is_newest_first_and_filters_by_branch(store: Store) -> None:
    main = saved(store, a_state("main"), an_entry("main", 1), an_entry("main", 2))
    saved(store, a_state("dev", job_id="job-d"), an_entry("dev", 3))
    saved(store, main, an_entry("main", 4))
    assert [e.reason for e in store.audit()] == ["step 4", "step 3", "step 2", "step 1"]
    assert [e.reason for e in store.audit(limit=2)] == ["step 4", "step 3"]
    assert [e.reason for e in store.audit(branch="main")] == ["step 4", "step 2", "step 1"]
    assert [e.reason for e in store.audit(branch="dev")] == ["step 3"]
    assert store.audit(branch="nowhere") == []
    newest = store.audit(limit=1)[0]
    assert newest == an_entry("main", 4).model_copy(update={"entry_id": newest.entry_id})
    assert newest.at == T0 + timedelta(minutes=4)


def test_unpublished_oldest_first_and_mark_published(store: Store) -> None:
    entries = [an_entry(minute=1), an_entry(minute=2, published=True), an_entry(minute=3)]
    saved(store, a_state(), *entries)
    store.record([an_entry(None, 4, AuditKind.UNKNOWN_JOB)])
    assert [e.reason for e in store.unpublished()] == ["step 1", "step 3", "step 4"]
    assert [e.reason for e in store.unpublished(limit=2)] == ["step 1", "step 3"]
    store.mark_published([entries[0].entry_id, entries[2].entry_id])
    left = store.unpublished()
    assert [e.reason for e in left] == ["step 4"] and not left[0].published
    assert [e.published for e in store.audit()] == [False, True, True, True]
    store.mark_published([])
    assert len(store.unpublished()) == 1


def test_record_appends_without_touching_branches(store: Store) -> None:
    state = saved(store, a_state(), an_entry("main", 1))
    store.record([an_entry("main", 5, AuditKind.IGNORED, published=True)], "src|ignored")
    assert store.load("main") == state
    assert store.load("other") is None
    assert [(e.kind, e.published) for e in store.audit(branch="main")] == [
        (AuditKind.IGNORED, True), (AuditKind.ACQUIRED, False)]
    assert store.seen("src|ignored")


def test_inbox_keys_are_seen_after_save_and_record(store: Store) -> None:
    assert not store.seen("src|1")
    saved(store, a_state(), an_entry(), key="src|1")
    store.record([], "src|2")
    assert store.seen("src|1") and store.seen("src|2")
    assert not store.seen("src|3")
    with pytest.raises(DuplicateEvent):  # a concurrent second delivery loses
        store.record([], "src|2")
    assert store.seen("src|2")


def test_a_concurrent_duplicate_never_commits_twice(store: Store) -> None:
    """Two deliveries of one event both loaded version 1; the first commits. The second's
    save on the stale version loses (VersionConflict or DuplicateEvent); the service then
    reloads and saves again on the current version, and that must say DuplicateEvent -
    never a second commit of the same event."""
    first = saved(store, a_state(), an_entry(), key="src|0")
    store.save(first, [an_entry("main", 2)], "src|dup")
    with pytest.raises((VersionConflict, DuplicateEvent)):
        store.save(first, [an_entry("main", 3)], "src|dup")
    current = store.load("main")
    with pytest.raises(DuplicateEvent):
        store.save(current, [an_entry("main", 3)], "src|dup")
    assert store.load("main").version == current.version
    assert len(store.audit(branch="main")) == 2
    store.save(current, [an_entry("main", 4)], "src|other")  # another event still commits


def test_branch_of_job_after_save(store: Store) -> None:
    assert store.branch_of_job("job-1") is None
    state = saved(store, a_state("main", job_id="job-1"))
    second = JobRecord(job_id="job-2", branch="main", status=JobStatus.ENDED, holder="x", ended_at=T0)
    saved(store, state.model_copy(update={"jobs": [*state.jobs, second]}))
    saved(store, a_state("dev", job_id="job-3"))
    assert store.branch_of_job("job-1") == "main"
    assert store.branch_of_job("job-2") == "main"
    assert store.branch_of_job("job-3") == "dev"
    assert store.branch_of_job("job-4") is None


def test_branches_with_locks_only_returns_locked_branches_sorted(store: Store) -> None:
    saved(store, a_state("zeta", job_id="j-z"))
    saved(store, a_state("idle", job_id="j-i", locked=False))
    alpha = saved(store, a_state("alpha", job_id="j-a"))
    assert [s.branch for s in store.branches_with_locks()] == ["alpha", "zeta"]
    assert store.branches_with_locks()[0] == alpha
    saved(store, alpha.model_copy(update={"locks": []}))
    assert [s.branch for s in store.branches_with_locks()] == ["zeta"]


def test_dead_letters_round_trip_newest_first(store: Store) -> None:
    letters = [a_letter(n) for n in range(3)]
    for letter in letters:
        store.add_dead_letter(letter)
    store.add_dead_letter(letters[0])  # the same letter twice is kept once
    assert store.dead_letters() == list(reversed(letters))
    assert store.dead_letters(limit=1) == [letters[2]]


def test_dead_letter_by_id_and_replay_marks(store: Store) -> None:
    """``indexgate deadletters replay`` marks a letter: when, by whom, how often (mongomock for Mongo)."""
    letter, other = a_letter(0), a_letter(1)
    store.add_dead_letter(letter)
    store.add_dead_letter(other)
    assert store.dead_letter(letter.letter_id) == letter and store.dead_letter("nope") is None
    store.mark_replayed(letter.letter_id, T0 + timedelta(minutes=1), "ops@host")
    store.mark_replayed(letter.letter_id, T0 + timedelta(minutes=2), "night@host")
    store.mark_replayed("nope", T0, "ops@host")  # a missing letter: nothing happens
    marked = store.dead_letter(letter.letter_id)
    assert marked is not None and marked.replays == 2 and marked.replayed_by == "night@host"
    assert marked.replayed_at == T0 + timedelta(minutes=2)
    assert marked.model_copy(update={"replays": 0, "replayed_at": None, "replayed_by": None}) == letter
    assert store.dead_letter(other.letter_id) == other  # untouched
    assert [x.letter_id for x in store.dead_letters()] == [other.letter_id, letter.letter_id]  # order kept


def test_dead_letters_keep_the_cut_body_fields(store: Store) -> None:
    plain = a_letter(0)
    cut = a_letter(1).model_copy(update={"body_bytes": 5_000_000, "body_sha256": "ab" * 32, "body_truncated": True})
    store.add_dead_letter(plain)
    store.add_dead_letter(cut)
    newest, oldest = store.dead_letters()
    assert (newest.body_bytes, newest.body_sha256, newest.body_truncated) == (5_000_000, "ab" * 32, True)
    assert (oldest.body_bytes, oldest.body_sha256, oldest.body_truncated) == (None, None, False)
    assert (newest, oldest) == (cut, plain)


def test_ping_answers(store: Store) -> None:
    store.ping()


# --- unavailability -----------------------------------------------------------------


def test_unreachable_store_raises_store_unavailable(store: Store, tmp_path: Path) -> None:
    if isinstance(store, SqliteStore):
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("a regular file where a directory should be")
        broken: Store = SqliteStore(blocker / "store.db")
    else:  # the real pymongo client, no server needed: nothing listens on port 1. With an operation timeout
        # (timeoutMS) pymongo waits it out in server selection whatever serverSelectionTimeoutMS says: a short one
        broken = MongoStore.from_url("mongodb://user:s3cret@127.0.0.1:1/?serverSelectionTimeoutMS=300&timeoutMS=300")
    with pytest.raises(StoreUnavailable) as caught:
        broken.load("main")
    with pytest.raises(StoreUnavailable):
        broken.save(a_state(), [an_entry()])
    with pytest.raises(StoreUnavailable):
        broken.save_index(an_index(), [an_entry()])
    with pytest.raises(StoreUnavailable):
        broken.load_index("main|search")
    if isinstance(broken, MongoStore):
        assert "127.0.0.1:1" in str(caught.value) and "s3cret" not in str(caught.value)
        with pytest.raises(StoreUnavailable):
            broken.ping()
    broken.close()


def test_mongo_store_creation_does_no_io() -> None:
    lazy = MongoStore.from_url("mongodb://db.invalid:27017/things")
    assert lazy.database == "things" and lazy._client is None
    assert MongoStore.from_url("mongodb://h1,h2/?replicaSet=rs").database == "indexgate"


# --- early job ends -----------------------------------------------------------------------


def an_early_end(job_id: str, second: int = 0, reason: ReleaseReason = ReleaseReason.COMPLETED) -> EarlyEnd:
    return EarlyEnd(job_id=job_id, reason=reason, at=T0 + timedelta(seconds=second), actor="funnel", cause=f"src|{job_id}",
                    data={"job_id": job_id, "record_count": second})


def test_an_early_end_round_trips_with_its_audit_and_inbox_key(store: Store) -> None:
    end = an_early_end("job-7", 5)
    store.remember_end(end, [an_entry(None, 1, AuditKind.UNKNOWN_JOB, published=True)], "src|end-7", 10, T0)
    assert store.early_end("job-7", T0) == end
    assert store.early_end("job-8", T0) is None
    assert store.seen("src|end-7") and [e.kind for e in store.audit()] == [AuditKind.UNKNOWN_JOB]
    with pytest.raises(DuplicateEvent):
        store.remember_end(end, [], "src|end-7", 10, T0)


def test_the_first_early_end_of_a_job_wins(store: Store) -> None:
    store.remember_end(an_early_end("job-1", 1, ReleaseReason.FAILED), [], None, 10, T0)
    store.remember_end(an_early_end("job-1", 2, ReleaseReason.COMPLETED), [], None, 10, T0)
    assert store.early_end("job-1", T0).reason is ReleaseReason.FAILED


def test_early_ends_are_bounded_by_count_and_age(store: Store) -> None:
    for n in range(5):
        store.remember_end(an_early_end(f"job-{n}", n), [], None, 3, T0)
    assert [n for n in range(5) if store.early_end(f"job-{n}", T0)] == [2, 3, 4]  # the newest 3
    assert store.early_end("job-2", T0 + timedelta(seconds=3)) is None  # older than asked: forgotten
    store.remember_end(an_early_end("job-9", 9), [], None, 3, T0 + timedelta(seconds=4))
    assert [n for n in (2, 3, 4, 9) if store.early_end(f"job-{n}", T0)] == [4, 9]  # pruned by age too
