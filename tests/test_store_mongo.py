"""What only the MongoDB adapter has: recovery of the writes that follow its compare-and-swap,
a database dropped under a running client, a server that stalls mid-operation.

A commit's audit rows, references and inbox key ride in the CAS as pending lists and are
written to their collections afterwards; these tests make those follow-up writes vanish (a
process dying right after the CAS) and check what the repair and the duplicate guard do.
Like the contract suite, they run against the live server named by ``MONGODB_URL`` and
otherwise against mongomock (the parameter id and a session line say which). The timeout
tests use real pymongo over TCP against ``tests/stalled_mongo.py``, a server that answers
the handshake and then never answers the operation.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from indexgate.api.calls import api_settings
from indexgate.errors import DuplicateEvent, StoreNotInitialized, StoreUnavailable
from indexgate.settings import Settings
from indexgate.store.mongo import MongoStore
from tests.stalled_mongo import StalledMongo
from tests.test_store_contract import (  # noqa: F401 (_say_which_mongo: the session line, autouse)
    MONGO_MODE,
    _mongo_store,
    _say_which_mongo,
    a_build,
    a_state,
    an_entry,
    an_index,
    saved,
    saved_index,
)


@pytest.fixture(params=[f"mongo[{MONGO_MODE}]"])
def mongo() -> Iterator[MongoStore]:
    yield from _mongo_store()


# --- MongoDB crash recovery ---------------------------------------------------------


def _crash_after_cas(mongo: MongoStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the post-CAS writes vanish, as if the process died right after the branch write."""
    monkeypatch.setattr(mongo, "_complete", lambda *args, **kwargs: None)


def test_mongo_crash_after_cas_is_recovered_by_unpublished(mongo: MongoStore, monkeypatch: pytest.MonkeyPatch) -> None:
    _crash_after_cas(mongo, monkeypatch)
    state = saved(mongo, a_state(), an_entry(minute=1), an_entry(minute=2), key="src|crash")
    assert mongo.load("main") == state  # the CAS itself committed
    assert mongo.audit() == [] and not mongo.seen("src|crash") and mongo.branch_of_job("job-1") is None
    monkeypatch.undo()  # "restart"
    assert [e.reason for e in mongo.unpublished()] == ["step 1", "step 2"]
    assert [e.reason for e in mongo.audit()] == ["step 2", "step 1"]
    assert mongo.seen("src|crash") and mongo.branch_of_job("job-1") == "main"
    raw = mongo._col("branches").find_one({"_id": "main"})
    assert raw is not None and raw["pending_audit"] == [] and raw["pending_inbox"] == []
    assert mongo.flush_pending() == 0  # nothing left; running it again changes nothing
    assert len(mongo.audit()) == 2


def test_mongo_redelivery_in_the_crash_window_is_a_duplicate(mongo: MongoStore, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """Before the repair ``seen()`` does not know the crashed commit's event yet; the CAS
    guard (``recent_inbox``) still refuses to commit it a second time."""
    _crash_after_cas(mongo, monkeypatch)
    state = saved(mongo, a_state(), an_entry(minute=1), key="src|crash")
    monkeypatch.undo()
    assert not mongo.seen("src|crash")
    with pytest.raises(DuplicateEvent):
        mongo.save(state, [an_entry(minute=2)], "src|crash")


def test_mongo_recent_inbox_stays_bounded(mongo: MongoStore) -> None:
    from indexgate.store.mongo import RECENT_INBOX

    state = saved(mongo, a_state(), key="src|0")
    for n in range(1, RECENT_INBOX + 20):
        state = saved(mongo, state, key=f"src|{n}")
    raw = mongo._col("branches").find_one({"_id": "main"})
    assert raw is not None and len(raw["recent_inbox"]) == RECENT_INBOX and raw["recent_inbox"][-1] == f"src|{n}"


def test_mongo_pending_entries_survive_a_later_commit(mongo: MongoStore, monkeypatch: pytest.MonkeyPatch) -> None:
    _crash_after_cas(mongo, monkeypatch)
    state = saved(mongo, a_state(), an_entry(minute=1), key="src|a")
    monkeypatch.undo()
    saved(mongo, state.model_copy(update={"fence": 2}), an_entry(minute=2), key="src|b")  # before any recovery
    assert [e.reason for e in mongo.unpublished()] == ["step 1", "step 2"]
    assert mongo.seen("src|a") and mongo.seen("src|b")


def test_mongo_recovery_of_partly_inserted_entries_is_idempotent(mongo: MongoStore) -> None:
    entries = [an_entry(minute=1), an_entry(minute=2)]
    state = saved(mongo, a_state(), *entries)
    # a crash after the first insert but before the pull: the rows are both stored and pending
    rows = list(mongo._col("audit").find({}).sort("seq", 1))
    mongo._col("branches").update_one({"_id": "main"}, {"$set": {"pending_audit": rows}})
    assert mongo.flush_pending() == 1
    assert [e.reason for e in mongo.unpublished()] == ["step 1", "step 2"]
    assert mongo.load("main") == state


def test_mongo_save_reports_success_once_the_cas_committed(mongo: MongoStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def down(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("server went away after the CAS")

    monkeypatch.setattr(mongo, "_complete", down)
    assert mongo.save(a_state(), [an_entry(minute=1)], "src|late") == 1
    monkeypatch.undo()
    assert [e.reason for e in mongo.unpublished()] == ["step 1"] and mongo.seen("src|late")


def test_mongo_index_crash_after_cas_is_recovered_by_unpublished(mongo: MongoStore,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _crash_after_cas(mongo, monkeypatch)
    state = saved_index(mongo, an_index(), an_entry(minute=1), an_entry(minute=2), key="src|crash")
    assert mongo.load_index("main|search") == state  # the CAS itself committed
    assert mongo.audit() == [] and not mongo.seen("src|crash") and mongo.index_of("shadow-1") is None
    monkeypatch.undo()  # "restart"
    assert [e.reason for e in mongo.unpublished()] == ["step 1", "step 2"]
    assert [e.reason for e in mongo.audit()] == ["step 2", "step 1"]
    assert mongo.seen("src|crash")
    assert mongo.index_of("shadow-1") == mongo.index_of("build-job-1") == "main|search"
    raw = mongo._col("indexes").find_one({"_id": "main|search"})
    assert raw is not None and raw["pending_audit"] == [] and raw["pending_inbox"] == []
    assert mongo.flush_pending() == 0  # nothing left; running it again changes nothing
    assert len(mongo.audit()) == 2


def test_mongo_flush_pending_covers_branches_and_indexes_together(mongo: MongoStore,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _crash_after_cas(mongo, monkeypatch)
    index = saved_index(mongo, an_index(), an_entry(minute=1), key="src|i")
    saved(mongo, a_state(), an_entry(minute=2), key="src|b")
    monkeypatch.undo()
    saved_index(mongo, index.model_copy(update={"pointer_token": 1}), an_entry(minute=3))  # before any recovery
    assert mongo.flush_pending() == 2
    assert [e.reason for e in mongo.unpublished()] == ["step 1", "step 2", "step 3"]
    assert mongo.seen("src|i") and mongo.seen("src|b")
    assert mongo.branch_of_job("job-1") == "main" and mongo.index_of("shadow-1") == "main|search"


def test_mongo_save_index_reports_success_once_the_cas_committed(mongo: MongoStore,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def down(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("server went away after the CAS")

    monkeypatch.setattr(mongo, "_complete", down)
    assert mongo.save_index(an_index(), [an_entry(minute=1)], "src|late") == 1
    monkeypatch.undo()
    assert [e.reason for e in mongo.unpublished()] == ["step 1"] and mongo.seen("src|late")
    assert mongo.index_of("build-job-1") == "main|search"


# --- the database dropped under a running client --------------------------------------


@pytest.mark.parametrize("verb", ["load", "load_index", "branches_with_locks", "indexes", "index_of",
                                  "branch_of_job", "ping"])
def test_mongo_reads_after_the_database_was_dropped_are_not_initialized(mongo: MongoStore, verb: str) -> None:
    """The meta document was checked by this client; the database is dropped afterwards (an
    operator's mistake, a restore elsewhere). A read that finds nothing looks at the meta
    document again: "unknown", never "nothing is locked"."""
    saved(mongo, a_state(), an_entry(minute=1))
    saved_index(mongo, an_index(), an_entry(minute=2))
    assert mongo.load("main") is not None  # the client has checked the meta document
    mongo._db().client.drop_database(mongo.database)
    read = {"load": lambda: mongo.load("main"), "load_index": lambda: mongo.load_index("main|search"),
            "branches_with_locks": mongo.branches_with_locks, "indexes": mongo.indexes,
            "index_of": lambda: mongo.index_of("shadow-1"), "branch_of_job": lambda: mongo.branch_of_job("job-1"),
            "ping": mongo.ping}[verb]
    with pytest.raises(StoreNotInitialized, match=mongo.database):
        read()
    assert mongo.database not in mongo._raw_db().client.list_database_names()  # and the read created nothing
    mongo.initialize()  # set up again (empty): misses are plain misses once more
    assert not read()


# --- a server that stalls mid-operation (real pymongo, real TCP) ----------------------


def _bounded(call, bound_s: float = 60):
    """Run ``call`` in a thread; what it raised, or a failure if it is still blocked after
    ``bound_s`` (a bound on waiting, so a hang fails the test instead of hanging it)."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(bound_s)
    assert outcome, f"the store call still blocks after {bound_s} s: no operation timeout"
    return outcome[0]


def test_a_stalled_server_is_store_unavailable_not_a_hang() -> None:
    """The default operation timeout (``INDEXGATE_MONGO_TIMEOUT_S``) applies to every verb."""
    with StalledMongo() as server:
        store = MongoStore.for_settings(f"mongodb://127.0.0.1:{server.port}/stalled",
                                        Settings(mongo_timeout_s=0.5))
        try:
            for verb in (lambda: store.load("main"), store.ping, lambda: store.audit(10)):
                raised = _bounded(verb)
                assert isinstance(raised, StoreUnavailable) and "timed out" in str(raised), raised
        finally:
            store.close()
        assert server.stalled, "the server was never asked: the test proves nothing"


def test_the_url_keeps_its_own_timeouts_and_the_api_caps_the_default() -> None:
    def timeout_of(url: str, **settings: float) -> float | None:
        store = MongoStore.for_settings(url, Settings(**settings))
        try:
            return store._raw_db().client.options.timeout  # connect=False: no I/O
        finally:
            store.close()

    assert timeout_of("mongodb://127.0.0.1:1/x") == 10  # the default
    assert timeout_of("mongodb://127.0.0.1:1/x", mongo_timeout_s=2.5) == 2.5
    assert timeout_of("mongodb://127.0.0.1:1/x?timeoutMS=300") == 0.3
    assert timeout_of("mongodb://127.0.0.1:1/x?socketTimeoutMS=700") is None  # its own, legacy, kind
    assert api_settings(Settings(api_store_timeout_s=1.5)).mongo_timeout_s == 1.5
