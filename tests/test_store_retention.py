"""Contract tests of the store verbs for due times and retention, over every adapter.

Same fixture as ``test_store_contract``: SQLite on a temporary file, and the Mongo adapter
over mongomock unless ``MONGODB_URL`` names a live server (the parameter id says which).
mongomock never runs TTL indexes: the Mongo tests prove the explicit prune and that the TTL
indexes are declared as intended, not that a server expires documents.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from indexgate.store.base import Store
from indexgate.store.sqlite import SqliteStore
from indexgate.testing.mongomock_store import MongomockStore
from tests.test_store_contract import (  # noqa: F401 (fixtures)
    MONGO_MODE,
    T0,
    _say_which_mongo,
    a_build,
    a_letter,
    a_state,
    an_entry,
    an_index,
    saved,
    saved_index,
    store,
)


MS = T0.replace(microsecond=0)  # due times on whole milliseconds: what every adapter keeps exactly


def now() -> datetime:
    return datetime.now(timezone.utc)


# --- due times ---------------------------------------------------------------------------


def test_branches_due_lists_only_branches_due_by_now_soonest_first(store: Store) -> None:
    for name, due_s in [("late", 30), ("soon", 10), ("later", 3600), ("never", None)]:
        state = a_state(name).model_copy(update={"due_at": MS + timedelta(seconds=due_s) if due_s else None})
        saved(store, state)
    assert store.branches_due(MS) == []
    assert store.branches_due(MS + timedelta(seconds=10)) == ["soon"]  # due at exactly now counts
    assert store.branches_due(MS + timedelta(seconds=60)) == ["soon", "late"]
    assert store.load("soon").due_at == MS + timedelta(seconds=10)


def test_a_save_moves_the_due_time(store: Store) -> None:
    state = saved(store, a_state("b").model_copy(update={"due_at": MS}))
    assert store.branches_due(MS) == ["b"]
    saved(store, state.model_copy(update={"due_at": None}))
    assert store.branches_due(MS + timedelta(days=1)) == []


def test_due_times_with_microseconds_are_never_listed_early(store: Store) -> None:
    due = T0 + timedelta(microseconds=400)  # MongoDB keeps milliseconds: it rounds up, never down
    saved(store, a_state("b").model_copy(update={"due_at": due}))
    assert store.branches_due(due - timedelta(microseconds=1)) == []
    assert store.branches_due(due + timedelta(milliseconds=1)) == ["b"]


def test_indexes_due_lists_only_indexes_due_by_now(store: Store) -> None:
    saved_index(store, an_index("a").model_copy(update={"due_at": MS}))
    saved_index(store, an_index("z").model_copy(update={"due_at": None}))
    assert store.indexes_due(MS) == ["a|search"]
    assert store.indexes_due(MS - timedelta(seconds=1)) == []


def test_a_forgotten_build_is_no_longer_found_by_its_references(store: Store) -> None:
    state = saved_index(store, an_index("main", "search", a_build(n=1), a_build(n=2)))
    assert store.index_of("build-job-1") == store.index_of("shadow-2") == "main|search"
    saved_index(store, state.model_copy(update={"builds": [a_build(n=2)]}))
    assert store.index_of("build-job-1") is None and store.index_of("shadow-1") is None
    assert store.index_of("shadow-2") == "main|search"


# --- retention ---------------------------------------------------------------------------


def test_prune_inbox_forgets_keys_written_before_the_cutoff(store: Store) -> None:
    saved(store, a_state("b"), key="src|1")
    store.record([], "src|2")
    written = now()
    assert store.prune_inbox(written - timedelta(hours=1)) == 0
    assert store.seen("src|1") and store.seen("src|2")
    assert store.prune_inbox(written + timedelta(seconds=2)) == 2
    assert not store.seen("src|1") and not store.seen("src|2")
    store.record([], "src|1")  # a forgotten key can be written again
    assert store.seen("src|1")


def test_prune_audit_deletes_old_published_entries_and_never_the_outbox(store: Store) -> None:
    old_sent, old_unsent = an_entry(minute=0, published=True), an_entry(minute=1)
    new_sent = an_entry(minute=90, published=True)
    store.record([old_sent, old_unsent, new_sent])
    assert store.prune_audit(T0 + timedelta(minutes=60)) == 1
    assert {e.entry_id for e in store.audit(10)} == {old_unsent.entry_id, new_sent.entry_id}
    assert [e.entry_id for e in store.unpublished()] == [old_unsent.entry_id]  # the relay still finds it
    store.mark_published([old_unsent.entry_id])
    assert store.prune_audit(T0 + timedelta(minutes=60)) == 1
    assert [e.entry_id for e in store.audit(10)] == [new_sent.entry_id]


def test_prune_audit_past_an_unsent_entry_goes_on(store: Store) -> None:
    entries = [an_entry(minute=m, published=m != 3) for m in range(8)]
    store.record(entries)
    assert store.prune_audit(T0 + timedelta(minutes=6)) == 5  # minutes 0-5 but the unsent one
    assert [e.detail["n"] for e in reversed(store.audit(10))] == [3, 6, 7]


def test_prune_dead_letters_by_age(store: Store) -> None:
    for n in range(5):
        store.add_dead_letter(a_letter(n))
    assert store.prune_dead_letters(T0 + timedelta(seconds=3)) == 3
    assert [d.reason for d in store.dead_letters()] == ["bad 4", "bad 3"]


def test_pruning_more_than_one_chunk(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("indexgate.store.sqlite_upkeep.PRUNE_CHUNK", 3)
    store.record([an_entry(minute=m, published=True) for m in range(10)])
    assert store.prune_audit(T0 + timedelta(minutes=8)) == 8
    assert len(store.audit(100)) == 2


def test_markers_round_trip(store: Store) -> None:
    assert store.marker("retention_ran_at") is None
    store.set_marker("retention_ran_at", T0)
    store.set_marker("retention_ran_at", T0 + timedelta(seconds=1))
    assert store.marker("retention_ran_at") == T0 + timedelta(seconds=1)
    store.reclaim_space()  # callable on every adapter, with or without anything to give back


# --- SQLite: space comes back, and stores from before are brought up to date ------------


def test_sqlite_gives_pruned_space_back(tmp_path: Path) -> None:
    sqlite = SqliteStore(tmp_path / "s.db")
    sqlite.initialize()
    conn = sqlite3.connect(tmp_path / "s.db")
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
    sqlite.record([an_entry(minute=m, published=True) for m in range(3000)])
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    assert sqlite.prune_audit(T0 + timedelta(days=30)) == 3000
    sqlite.reclaim_space()
    after = conn.execute("PRAGMA page_count").fetchone()[0]
    assert after < pages / 4 and conn.execute("PRAGMA freelist_count").fetchone()[0] == 0
    conn.close()
    sqlite.close()


OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE branches (branch TEXT PRIMARY KEY, version INTEGER NOT NULL, has_locks INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE TABLE jobs (job_id TEXT PRIMARY KEY, branch TEXT NOT NULL);
CREATE TABLE inbox (key TEXT PRIMARY KEY, at TEXT NOT NULL);
CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, entry_id TEXT UNIQUE NOT NULL, at TEXT NOT NULL,
    branch TEXT, published INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE TABLE indexes (key TEXT PRIMARY KEY, version INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE TABLE index_refs (ref TEXT PRIMARY KEY, key TEXT NOT NULL);
CREATE TABLE dead_letters (seq INTEGER PRIMARY KEY AUTOINCREMENT, letter_id TEXT UNIQUE NOT NULL, at TEXT NOT NULL,
    doc TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
"""


def test_sqlite_initialize_brings_a_store_from_before_up_to_date(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA)
    for state in (a_state("locked"), a_state("idle", locked=False)):
        conn.execute("INSERT INTO branches VALUES (?, 1, ?, ?)",
                     (state.branch, int(bool(state.locks)), state.model_dump_json(exclude={"due_at"})))
    conn.commit()
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()
    sqlite = SqliteStore(path)
    sqlite.initialize()
    sqlite.initialize()  # idempotent
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    conn.close()
    assert sqlite.branches_due(T0) == ["locked"]  # due now: the first sweep computes the real time
    assert sqlite.load("locked").due_at == datetime(1970, 1, 1, tzinfo=timezone.utc)
    assert sqlite.load("idle").due_at is None
    sqlite.close()


# --- MongoDB: TTL indexes and documents from before -------------------------------------


def test_mongo_declares_ttl_indexes_for_what_retention_prunes() -> None:
    mongo = MongomockStore.from_url("mongomock://", ttl_s={"inbox": 86_400, "audit": 3600, "dead_letters": 7200})
    mongo.initialize()
    db = mongo._db()
    audit = db.audit.index_information()["retention_ttl"]
    assert audit["expireAfterSeconds"] == 3600 and audit["partialFilterExpression"] == {"published": True}
    assert db.dead_letters.index_information()["retention_ttl"]["expireAfterSeconds"] == 7200
    assert db.inbox.index_information()["retention_ttl"]["expireAfterSeconds"] == 2 * 86_400  # a backstop
    mongo.ttl_s["audit"] = 60
    mongo.initialize()  # a changed retention rebuilds its index
    assert db.audit.index_information()["retention_ttl"]["expireAfterSeconds"] == 60
    mongo.record([], "src|1")
    assert isinstance(db.inbox.find_one({"_id": "src|1"})["at"], datetime)  # the BSON date the TTL needs


def test_mongo_initialize_brings_documents_from_before_up_to_date() -> None:
    mongo = MongomockStore.from_url("mongomock://")
    mongo.initialize()
    db = mongo._db()
    doc = a_state("locked").model_dump(mode="json", exclude={"due_at"})
    db.branches.insert_one({"_id": "locked", "version": 1, "has_locks": True, "doc": doc})
    db.inbox.insert_one({"_id": "src|old"})
    mongo.initialize()
    assert mongo.branches_due(T0) == ["locked"] and mongo.load("locked").due_at.year == 1970
    assert isinstance(db.inbox.find_one({"_id": "src|old"})["at"], datetime)


def test_fixture_names_the_mongo_mode() -> None:
    assert MONGO_MODE in {"mongomock", "live"}
