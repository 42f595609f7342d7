"""MongoDB adapter (pymongo): the same verbs and semantics as ``SqliteStore``.

There are two aggregates, each one document with ``_id`` = its key and a ``version``: a
branch (``branches``, key = branch name) and an index (``indexes``, key =
``branch|index_type``). The commit point of ``save`` / ``save_index`` is one conditional
single-document write on that document (``version`` compare-and-swap); MongoDB makes that
atomic without multi-document transactions, so mutual exclusion and fencing hold on any
deployment. The commit's other writes (audit/outbox rows, the reference rows -- ``jobs``
for a branch's job ids, ``index_refs`` for an index's build job ids and shadow ids -- and
the event's inbox key) go to other collections and therefore happen *after* the CAS. To
stay crash-safe they ride along in the CAS itself: the update pushes the audit rows onto
the aggregate document's ``pending_audit`` list and the inbox key onto ``pending_inbox``
(reference rows are derived from the stored document itself); afterwards they are
inserted idempotently (deterministic ``_id``, duplicates ignored) and then pulled from the
lists by id. ``$push``/``$pull`` (not a whole-document replace) keep a crashed commit's
leftovers even when the next commit on the aggregate lands before recovery.
``flush_pending()`` completes any leftovers on both collections and runs at the start of
``unpublished()``, so the outbox relay repairs a crash on its next poll.

The inbox collection is written after the CAS, so a second delivery of an event (running
concurrently in another worker, or redelivered before a crashed commit was repaired) can
pass ``seen()``; the CAS itself stops it: each aggregate document keeps the keys of its
last ``RECENT_INBOX`` events in ``recent_inbox``, the CAS filter requires the event's key
to be absent, and a save that fails on it raises ``DuplicateEvent`` (as SQLite's inbox
insert does inside its transaction), so the event never commits twice.

Honest limits: until the repair, a crashed commit's audit entries are missing from
``audit()``, its inbox key from ``seen()`` and its new references from ``branch_of_job()``
/ ``index_of()``. Once the CAS
succeeded, a save reports success even if the follow-up writes fail (they are logged and
left to ``flush_pending``): the state *is* committed, and reporting ``StoreUnavailable``
would make the caller treat a durable write as lost. Audit ``seq`` numbers are reserved
before the CAS, so per aggregate they follow commit order, but a slow commit's rows can
become visible after a later commit's (at-least-once outbox).

Aggregates and audit entries are kept as JSON-mode documents (ISO strings), because BSON
dates are millisecond, naive values and the SQLite adapter round-trips microseconds. The
aggregates' ``due_at`` beside the document is a BSON date, rounded *up* to the millisecond
(listed due never before it is); due listings, retention and migrations live in
``mongo_upkeep``.
The client, its timeouts, the meta check (again on every read that finds nothing) and the
mapping of driver errors to ``StoreUnavailable`` are ``mongo_connection``'s. (Tests run
this adapter over mongomock through ``indexgate.testing.mongomock_store``.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError

from indexgate.errors import DuplicateEvent, StoreUnavailable, VersionConflict
from indexgate.store.base import SCHEMA_VERSION
from indexgate.store.mongo_connection import MongoConnection
from indexgate.store.mongo_upkeep import MongoUpkeep, bson_due, now
from indexgate.schemas.records import AuditEntry, BranchState, DeadLetter, EarlyEnd
from indexgate.schemas.shadows import IndexState

log = logging.getLogger(__name__)

_DUPLICATE_KEY = 11000
RECENT_INBOX = 200  # event keys each aggregate document remembers for the duplicate guard in its CAS


def _unapplied(flt: dict[str, Any], inbox_key: str | None) -> dict[str, Any]:
    """The CAS filter, plus "this event is not among the document's recent ones"."""
    return flt if inbox_key is None else {**flt, "recent_inbox": {"$ne": inbox_key}}


_PENDING = {"$or": [{"pending_audit.0": {"$exists": True}}, {"pending_inbox.0": {"$exists": True}}]}
# aggregate collection -> (noun for messages, reference collection, field naming the aggregate there)
_AGGREGATES = {"branches": ("branch", "jobs", "branch"), "indexes": ("index", "index_refs", "key")}


class MongoStore(MongoUpkeep, MongoConnection):
    def initialize(self) -> None:
        """Create the indexes and the ``meta`` document that marks the database as indexgate's."""
        with self._call("initialization"):
            db = self._raw_db()
            self._migrate(db)
            self._create_indexes(db)
            db.meta.replace_one({"_id": "schema"}, {"_id": "schema", "version": SCHEMA_VERSION}, upsert=True)
            self._checked = True

    def _create_indexes(self, db: Database[Any]) -> None:
        self._create_upkeep_indexes(db)
        db.branches.create_index("has_locks", partialFilterExpression={"has_locks": True})
        db.audit.create_index([("seq", DESCENDING)])
        db.audit.create_index(
            [("published", ASCENDING), ("seq", ASCENDING)], partialFilterExpression={"published": False}
        )
        db.audit.create_index([("branch", ASCENDING), ("seq", DESCENDING)])
        db.dead_letters.create_index([("seq", DESCENDING)])
        db.early_ends.create_index([("at", DESCENDING)])

    # --- aggregates ---------------------------------------------------------------

    def load(self, branch: str) -> BranchState | None:
        with self._call(f"load of branch {branch}"):
            raw = self._found(self._col("branches").find_one({"_id": branch}, {"doc": 1}))
        return BranchState.model_validate(raw["doc"]) if raw else None

    def save(self, state: BranchState, audit: Sequence[AuditEntry], inbox_key: str | None = None) -> int:
        new = state.model_copy(update={"version": state.version + 1})
        doc = new.model_dump(mode="json")
        return self._save("branches", state.branch, state.version, doc,
                          {"has_locks": bool(new.locks), "due_at": bson_due(new.due_at)}, audit, inbox_key)

    def load_index(self, key: str) -> IndexState | None:
        with self._call(f"load of index {key}"):
            raw = self._found(self._col("indexes").find_one({"_id": key}, {"doc": 1}))
        return IndexState.model_validate(raw["doc"]) if raw else None

    def save_index(self, state: IndexState, audit: Sequence[AuditEntry], inbox_key: str | None = None) -> int:
        new = state.model_copy(update={"version": state.version + 1})
        return self._save("indexes", state.key, state.version, new.model_dump(mode="json"),
                          {"due_at": bson_due(new.due_at)}, audit, inbox_key)

    def index_of(self, ref: str) -> str | None:
        with self._call(f"lookup of index reference {ref}"):
            raw = self._found(self._col("index_refs").find_one({"_id": ref}))
        return raw["key"] if raw else None

    def indexes(self) -> list[IndexState]:
        with self._call("listing of indexes"):
            docs = self._found(list(self._col("indexes").find({}, {"doc": 1}).sort("_id", ASCENDING)))
        return [IndexState.model_validate(raw["doc"]) for raw in docs]

    def _save(self, name: str, key: str, version: int, doc: dict[str, Any], extra: dict[str, Any],
              audit: Sequence[AuditEntry], inbox_key: str | None) -> int:
        """Compare-and-swap of aggregate ``key`` in collection ``name``: insert when ``version``
        is 0, else update only if the stored version is still ``version``. The audit rows and
        inbox key ride along as pending and are completed afterwards. Returns the new version."""
        noun = _AGGREGATES[name][0]
        rows = self._audit_rows(audit)  # seq reserved before the CAS: per-aggregate commit order
        fields = {"version": version + 1, **extra, "doc": doc}
        inbox = [inbox_key] if inbox_key is not None else []
        conflict = VersionConflict(f"{noun} {key} changed since version {version}")
        with self._call(f"save of {noun} {key}"):
            collection = self._col(name)
            if version == 0:
                try:
                    collection.insert_one({"_id": key, **fields, "pending_audit": rows, "pending_inbox": inbox,
                                           "recent_inbox": inbox})
                except DuplicateKeyError:
                    raise conflict from None
            else:
                done = collection.update_one(_unapplied({"_id": key, "version": version}, inbox_key), {
                    "$set": fields,
                    "$push": {"pending_audit": {"$each": rows}, "pending_inbox": {"$each": inbox},
                              "recent_inbox": {"$each": inbox, "$slice": -RECENT_INBOX}},
                })
                if done.matched_count != 1:
                    if inbox_key is not None and collection.find_one({"_id": key, "recent_inbox": inbox_key}, {"_id": 1}):
                        raise DuplicateEvent(f"event {inbox_key} was already applied to {noun} {key}")
                    raise conflict
        try:  # committed: the rest is recoverable by flush_pending, so a failure here is not the caller's
            self._complete(name, key, rows, _refs(name, doc, rows), inbox)
        except StoreUnavailable:
            log.warning("%s %s committed at version %d; its audit/inbox writes wait for flush_pending",
                        noun, key, version + 1, exc_info=True)
        return version + 1

    def record(self, audit: Sequence[AuditEntry], inbox_key: str | None = None) -> None:
        rows = self._audit_rows(audit)
        if inbox_key is not None:  # claim the key first: a concurrent delivery loses here
            try:
                with self._call("inbox claim"):
                    self._col("inbox").insert_one({"_id": inbox_key, "at": now()})
            except StoreUnavailable as exc:
                if isinstance(exc.__cause__, DuplicateKeyError):
                    raise DuplicateEvent(f"event {inbox_key} was already applied") from exc
                raise
        with self._call("record of audit entries"):
            self._insert_ignoring_duplicates(self._col("audit"), rows)

    def flush_pending(self) -> int:
        """Finish the post-CAS writes a crash left on branch and index documents (reference
        rows are recreated from the stored document); idempotent. Returns how many
        aggregates needed it."""
        pending = []
        with self._call("recovery of pending audit entries"):
            for name in _AGGREGATES:
                found = self._col(name).find(_PENDING, {"pending_audit": 1, "pending_inbox": 1, "doc.jobs": 1,
                                                        "doc.builds": 1})
                pending += [(name, raw) for raw in found]
        for name, raw in pending:
            refs = _refs(name, raw.get("doc", {}), raw.get("pending_audit", []))
            self._complete(name, raw["_id"], raw.get("pending_audit", []), refs, raw.get("pending_inbox", []))
        return len(pending)

    def _complete(self, name: str, key: str, rows: list[dict[str, Any]], refs: list[str], inbox: list[str]) -> None:
        noun, ref_collection, ref_field = _AGGREGATES[name]
        with self._call(f"audit/inbox writes of {noun} {key}"):
            self._insert_ignoring_duplicates(self._col("audit"), rows)
            self._insert_ignoring_duplicates(self._col(ref_collection), [{"_id": r, ref_field: key} for r in refs])
            if name == "indexes":  # the references of builds the aggregate forgot go too
                self._col(ref_collection).delete_many({ref_field: key, "_id": {"$nin": refs}})
            self._insert_ignoring_duplicates(self._col("inbox"), [{"_id": k, "at": now()} for k in inbox])
            if rows or inbox:
                self._col(name).update_one(
                    {"_id": key},
                    {"$pull": {"pending_audit": {"_id": {"$in": [r["_id"] for r in rows]}},
                               "pending_inbox": {"$in": inbox}}},
                )

    @staticmethod
    def _insert_ignoring_duplicates(collection: Collection[Any], docs: list[dict[str, Any]]) -> None:
        """``INSERT OR IGNORE``: only duplicate-key errors are swallowed."""
        if not docs:
            return
        try:
            collection.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if exc.details.get("writeConcernErrors") or any(e.get("code") != _DUPLICATE_KEY for e in errors):
                raise

    def _next_seq(self, name: str, count: int) -> int:
        """Reserve ``count`` increasing numbers for ``name``; returns the first."""
        for attempt in range(2):  # two first-ever upserts can race on the counter's _id
            try:
                raw = self._col("counters").find_one_and_update(
                    {"_id": name}, {"$inc": {"n": count}}, upsert=True, return_document=ReturnDocument.AFTER
                )
                return int(raw["n"]) - count + 1
            except DuplicateKeyError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _audit_rows(self, audit: Sequence[AuditEntry]) -> list[dict[str, Any]]:
        if not audit:
            return []
        with self._call("numbering of audit entries"):
            first = self._next_seq("audit", len(audit))
        return [
            {"_id": e.entry_id, "seq": first + i, "at": e.at, "branch": e.branch, "published": e.published,
             "doc": e.model_dump(mode="json")}
            for i, e in enumerate(audit)
        ]

    def seen(self, inbox_key: str) -> bool:
        with self._call("inbox lookup"):
            return self._col("inbox").find_one({"_id": inbox_key}, {"_id": 1}) is not None

    def branch_of_job(self, job_id: str) -> str | None:
        with self._call(f"lookup of job {job_id}"):
            raw = self._found(self._col("jobs").find_one({"_id": job_id}))
        return raw["branch"] if raw else None

    def remember_end(self, end: EarlyEnd, audit: Sequence[AuditEntry], inbox_key: str | None, keep: int,
                     since: datetime) -> None:
        """The end first, then its inbox key: a crash in between only re-remembers it (no-op)."""
        with self._call(f"saving the early end of job {end.job_id}"):
            ends = self._col("early_ends")
            try:
                ends.update_one({"_id": end.job_id}, {"$setOnInsert": {
                    "at": end.at.timestamp(), "doc": end.model_dump(mode="json")}}, upsert=True)
            except DuplicateKeyError:  # a concurrent first upsert of the same job: the first one wins
                pass
            ends.delete_many({"at": {"$lt": since.timestamp()}})
            surplus = [raw["_id"] for raw in ends.find({}, {"_id": 1}).sort("at", DESCENDING).skip(keep)]
            if surplus:
                ends.delete_many({"_id": {"$in": surplus}})
        self.record(audit, inbox_key)

    def early_end(self, job_id: str, since: datetime) -> EarlyEnd | None:
        with self._call(f"lookup of the early end of job {job_id}"):
            raw = self._col("early_ends").find_one({"_id": job_id, "at": {"$gte": since.timestamp()}})
        return EarlyEnd.model_validate(raw["doc"]) if raw else None

    def branches_with_locks(self) -> list[BranchState]:
        with self._call("listing of locked branches"):
            docs = self._found(list(self._col("branches").find({"has_locks": True}, {"doc": 1}).sort("_id", ASCENDING)))
        return [BranchState.model_validate(raw["doc"]) for raw in docs]

    # --- audit / outbox -----------------------------------------------------------

    def audit(self, limit: int = 100, branch: str | None = None) -> list[AuditEntry]:
        query = {} if branch is None else {"branch": branch}
        return [_audit(raw) for raw in self._find("audit", query, DESCENDING, limit)]

    def unpublished(self, limit: int = 500) -> list[AuditEntry]:
        self.flush_pending()  # the relay's poll doubles as crash recovery
        return [_audit(raw) for raw in self._find("audit", {"published": False}, ASCENDING, limit)]

    def mark_published(self, entry_ids: Sequence[str]) -> None:
        if not entry_ids:
            return
        with self._call("marking audit entries published"):
            self._col("audit").update_many({"_id": {"$in": list(entry_ids)}}, {"$set": {"published": True}})

    # --- dead letters -------------------------------------------------------------

    def add_dead_letter(self, letter: DeadLetter) -> None:
        with self._call("saving a dead letter"):
            seq = self._next_seq("dead_letters", 1)
            row = {"_id": letter.letter_id, "seq": seq, "at": letter.at, "doc": letter.model_dump(mode="json")}
            self._insert_ignoring_duplicates(self._col("dead_letters"), [row])

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return [DeadLetter.model_validate(raw["doc"]) for raw in self._find("dead_letters", {}, DESCENDING, limit)]

    def dead_letter(self, letter_id: str) -> DeadLetter | None:
        with self._call(f"reading dead letter {letter_id}"):
            raw = self._col("dead_letters").find_one({"_id": letter_id})
        return DeadLetter.model_validate(raw["doc"]) if raw else None

    def mark_replayed(self, letter_id: str, at: datetime, by: str) -> None:
        """One single-document update: concurrent replays each count."""
        with self._call(f"marking dead letter {letter_id} replayed"):
            self._col("dead_letters").update_one(
                {"_id": letter_id},
                {"$set": {"doc.replayed_at": at.isoformat(), "doc.replayed_by": by}, "$inc": {"doc.replays": 1}})

    def _find(self, name: str, query: dict[str, Any], order: int, limit: int) -> Iterable[dict[str, Any]]:
        """``ORDER BY seq LIMIT n`` as SQLite reads it: 0 = nothing, negative = no limit."""
        if limit == 0:
            return []
        with self._call(f"reading {name}"):
            return list(self._col(name).find(query).sort("seq", order).limit(max(limit, 0)))


def _refs(name: str, doc: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """The ids an aggregate's JSON document is found by: a branch's active job ids and the
    jobs its audit rows name (see ``base.job_refs``); an index's build job ids and shadow ids."""
    if name == "branches":
        named = {row["doc"].get("job_id") for row in rows if row["doc"].get("branch") == doc.get("branch")}
        return sorted({job["job_id"] for job in doc.get("jobs", [])} | named - {None})
    return sorted({ref for build in doc.get("builds", []) for ref in (build["job_id"], build["shadow_index_id"])})


def _audit(raw: dict[str, Any]) -> AuditEntry:
    return AuditEntry.model_validate(raw["doc"]).model_copy(update={"published": bool(raw["published"])})
