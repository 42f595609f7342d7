"""What the MongoDB adapter does besides the aggregates' writes: the due listings the sweeps
read, retention (explicit prunes, TTL indexes, markers), leases and bringing documents written by an
older version up to date. A mixin of ``MongoStore``: it uses the store's ``_call`` (driver
errors as ``StoreUnavailable``) and ``_col`` (majority reads and writes).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Callable, ContextManager

from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from indexgate.schemas.records import Lease
from indexgate.store.base import EPOCH, due_us

# collection -> which of its rows retention prunes (by their ``at`` BSON date); TTL indexes likewise
TTL_FILTERS: dict[str, dict[str, Any]] = {"inbox": {}, "audit": {"published": True}, "dead_letters": {}}
INBOX_TTL_FACTOR = 2  # the inbox's TTL index is a backstop: see _ttl_index


class MongoUpkeep:
    ttl_s: dict[str, float]
    _call: Callable[[str], ContextManager[None]]
    _col: Callable[[str], Collection[Any]]

    @staticmethod
    def _migrate(db: Database[Any]) -> None:
        """Documents written by an older version: aggregates get a due time of "now" (the first
        sweep computes the real one), inbox keys the stamp retention and the TTL index need."""
        due_now = {"$set": {"due_at": EPOCH, "doc.due_at": EPOCH.isoformat()}}
        db.branches.update_many({"has_locks": True, "due_at": {"$exists": False}}, due_now)
        db.indexes.update_many({"due_at": {"$exists": False}}, due_now)
        db.inbox.update_many({"at": {"$exists": False}}, {"$set": {"at": now()}})

    def _create_upkeep_indexes(self, db: Database[Any]) -> None:
        for name in ("branches", "indexes"):  # the aggregates' due times, for the sweeps
            db[name].create_index("due_at", name="due_at", partialFilterExpression={"due_at": {"$type": "date"}})
        db.index_refs.create_index("key")  # a forgotten build's references are deleted by key
        for name, only in TTL_FILTERS.items():
            self._ttl_index(db, name, only)

    def _ttl_index(self, db: Database[Any], name: str, only: dict[str, Any]) -> None:
        """The server deletes what retention would, on its own clock (a TTL index needs a BSON
        date: ``at``). The inbox's expires at ``INBOX_TTL_FACTOR`` x its retention, a backstop
        only: the TTL monitor also runs while no worker reaches the server, when batches that
        wait for the store may still carry applied events, and the explicit prune (which holds
        back after an outage, see ``indexgate.retention``) does the real work. An index whose
        expiry changed is rebuilt; without a retention for the collection there is none."""
        seconds = self.ttl_s.get(name)
        wanted = None if seconds is None else int(seconds * (INBOX_TTL_FACTOR if name == "inbox" else 1))
        current = db[name].index_information().get("retention_ttl")
        if current is not None and current.get("expireAfterSeconds") != wanted:
            db[name].drop_index("retention_ttl")
        if wanted is not None:
            options: dict[str, Any] = {"partialFilterExpression": only} if only else {}
            db[name].create_index("at", name="retention_ttl", expireAfterSeconds=wanted, **options)

    def branches_due(self, now: datetime) -> list[str]:
        return self._due("branches", now)

    def indexes_due(self, now: datetime) -> list[str]:
        return self._due("indexes", now)

    def _due(self, name: str, now: datetime) -> list[str]:
        with self._call(f"listing of due {name}"):
            found = self._col(name).find({"due_at": {"$lte": now}}, {"_id": 1}).sort("due_at", ASCENDING)
            return [raw["_id"] for raw in found]

    # --- retention --------------------------------------------------------------

    def prune_inbox(self, before: datetime) -> int:
        return self._prune("inbox", before)

    def prune_audit(self, before: datetime) -> int:
        return self._prune("audit", before)

    def prune_dead_letters(self, before: datetime) -> int:
        return self._prune("dead_letters", before)

    def _prune(self, name: str, before: datetime) -> int:
        """What the TTL index would delete, now (the TTL monitor runs once a minute, and
        mongomock never runs it): one ``delete_many`` over the ``at`` index."""
        with self._call(f"pruning {name}"):
            return self._col(name).delete_many({**TTL_FILTERS[name], "at": {"$lt": before}}).deleted_count

    def reclaim_space(self) -> None:
        """Nothing to do: WiredTiger reuses the space of deleted documents."""

    def marker(self, name: str) -> datetime | None:
        with self._call(f"reading marker {name}"):
            raw = self._col("meta").find_one({"_id": f"marker:{name}"})
        return datetime.fromisoformat(raw["at"]) if raw else None  # ISO, like the aggregates: microseconds

    def set_marker(self, name: str, at: datetime) -> None:
        with self._call(f"writing marker {name}"):
            self._col("meta").replace_one({"_id": f"marker:{name}"}, {"_id": f"marker:{name}", "at": at.isoformat()},
                                         upsert=True)


    def lease(self, name: str) -> Lease | None:
        with self._call(f"reading lease {name}"):
            raw = self._col("leases").find_one({"_id": name})
        return Lease.model_validate_json(raw["doc"]) if raw else None

    def swap_lease(self, current: Lease | None, new: Lease) -> bool:
        """One conditional write (an insert for the first taker, whom the unique ``_id``
        decides): a version of a lease is its (token, renewed_at)."""
        doc = {"_id": new.name, "token": new.token, "renewed_us": due_us(new.renewed_at), "doc": new.model_dump_json()}
        with self._call(f"writing lease {new.name}"):
            if current is None:
                try:
                    self._col("leases").insert_one(doc)
                    return True
                except DuplicateKeyError:
                    return False
            found = {"_id": new.name, "token": current.token, "renewed_us": due_us(current.renewed_at)}
            return self._col("leases").replace_one(found, doc).matched_count == 1


def now() -> datetime:
    return datetime.now(timezone.utc)


def bson_due(at: datetime | None) -> datetime | None:
    """A due time as a BSON date (milliseconds), rounded up: never due before it is."""
    if at is None:
        return None
    spare = at.microsecond % 1000
    return at + timedelta(microseconds=1000 - spare) if spare else at


