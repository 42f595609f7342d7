"""The MongoDB adapter's connection: a pymongo client made lazily (and anew after a fork),
with timeouts, the check that the database is an initialized indexgate store, and driver
errors turned into ``StoreUnavailable``. ``MongoStore`` (``mongo.py``) adds the verbs.

Every operation has a timeout (pymongo ``timeoutMS``, ``INDEXGATE_MONGO_TIMEOUT_S``, unless
the URL sets ``timeoutMS`` or ``socketTimeoutMS`` itself): ``serverSelectionTimeoutMS``
only bounds finding a server, so one that accepts and then stalls mid-operation would
otherwise pin an API store thread or a worker task for good. The meta document is checked
once per client, and again whenever a read finds nothing (``_found``: one more round trip,
on a miss only), so a database dropped or replaced under a running client is
``StoreNotInitialized``, never an empty store read as "nothing is locked".
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar, Self
from urllib.parse import parse_qs, urlparse

from pymongo import MongoClient, WriteConcern
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import PyMongoError
from pymongo.read_concern import ReadConcern

from indexgate.errors import StoreNotInitialized, StoreUnavailable
from indexgate.settings import Settings

DEFAULT_DATABASE = "indexgate"
SERVER_SELECTION_TIMEOUT_MS = 2000  # an unreachable server becomes StoreUnavailable quickly
OPERATION_TIMEOUT_OPTIONS = {"timeoutms", "sockettimeoutms"}  # a URL with either keeps its own
AGGREGATE_COLLECTIONS = {"branches", "indexes"}  # read with majority read concern


class MongoConnection:
    client_holds_data: ClassVar[bool] = False  # an in-memory client (tests): never closed, kept across a fork

    def __init__(self, url: str, database: str = DEFAULT_DATABASE, ttl_s: Mapping[str, float] | None = None,
                 timeout_s: float = 10.0) -> None:
        """Remember where to connect; no I/O happens until the first verb. ``ttl_s`` (per
        collection of ``mongo_upkeep.TTL_FILTERS``) makes ``initialize`` create TTL indexes;
        ``timeout_s`` bounds each operation unless the URL sets its own timeout."""
        self.url = url
        self.database = database
        self.ttl_s = dict(ttl_s or {})
        self.timeout_s = timeout_s
        self._client: Any = None
        self._pid = 0
        self._checked = False  # the meta document was seen by this client
        self._mutex = threading.RLock()

    @classmethod
    def from_url(cls, url: str, database: str | None = None, ttl_s: Mapping[str, float] | None = None,
                 timeout_s: float = 10.0) -> Self:
        """``mongodb://[user:pw@]host[,host]/db?opts`` or ``mongodb+srv://...``; the database
        is the URL path (default ``indexgate``) unless ``database`` is given."""
        name = urlparse(url).path.lstrip("/").split("/")[0]
        return cls(url, database or name or DEFAULT_DATABASE, ttl_s, timeout_s)

    @classmethod
    def for_settings(cls, url: str, settings: Settings) -> Self:
        """The adapter ``open_store`` builds: retention TTLs and the operation timeout from ``settings``."""
        return cls.from_url(url, ttl_s={"inbox": settings.inbox_retention_s, "audit": settings.audit_retention_s,
                                        "dead_letters": settings.dead_letter_retention_s},
                            timeout_s=settings.mongo_timeout_s)

    @property
    def host(self) -> str:
        """The URL's host list without credentials, for error messages."""
        return urlparse(self.url).netloc.rpartition("@")[2] or "localhost"

    def _new_client(self) -> Any:
        options = {key.lower() for key in parse_qs(urlparse(self.url).query)}
        kwargs: dict[str, Any] = {"connect": False, "tz_aware": True}
        if "serverselectiontimeoutms" not in options:  # keyword arguments would override the URL
            kwargs["serverSelectionTimeoutMS"] = SERVER_SELECTION_TIMEOUT_MS
        if not options & OPERATION_TIMEOUT_OPTIONS:
            kwargs["timeoutMS"] = round(self.timeout_s * 1000)
        return MongoClient(self.url, **kwargs)

    def _raw_db(self) -> Database[Any]:
        with self._mutex:
            if self._client is None or (not self.client_holds_data and self._pid != os.getpid()):
                # a client must never cross a fork: the child builds its own, never closes the parent's
                self._client, self._pid, self._checked = self._new_client(), os.getpid(), False
            return self._client[self.database]

    def _db(self) -> Database[Any]:
        db = self._raw_db()
        if not self._checked:
            if db.meta.find_one({"_id": "schema"}) is None:
                raise StoreNotInitialized(
                    f"database {self.database!r} at {self.host} is not an initialized indexgate store (no meta "
                    "document; nothing was created); check INDEXGATE_STORE_URL, or run `indexgate setup`")
            self._checked = True
        return db

    def _recheck(self) -> None:
        """Look at the meta document again (``StoreNotInitialized`` if it is gone)."""
        self._checked = False
        self._db()

    def _found(self, found: Any) -> Any:
        """A read's result; when it found nothing, the meta document is looked at again (one
        more round trip, on a miss only), so a database dropped or replaced since the first
        check is ``StoreNotInitialized`` instead of an empty answer. Call inside ``_call``."""
        if not found:
            self._recheck()
        return found

    def _col(self, name: str) -> Collection[Any]:
        """Majority writes everywhere, majority reads of aggregates: nothing a failover can undo."""
        read = ReadConcern("majority") if name in AGGREGATE_COLLECTIONS else None
        return self._db().get_collection(name, write_concern=WriteConcern("majority"), read_concern=read)

    @contextmanager
    def _call(self, what: str) -> Iterator[None]:
        """Turn driver errors into ``StoreUnavailable`` right where they happen."""
        try:
            yield
        except PyMongoError as exc:
            reason = str(exc)
            password = urlparse(self.url).password
            if password:  # never let a driver message leak the URL's secret
                reason = reason.replace(password, "***")
            raise StoreUnavailable(
                f"MongoDB store at {self.host} (database {self.database!r}) unavailable during {what}: "
                f"{reason}; check that the server is up and reachable and the URL is right"
            ) from exc

    def close(self) -> None:
        with self._mutex:
            if self._client is not None and not self.client_holds_data:
                if self._pid == os.getpid():
                    self._client.close()
                self._client = None

    def ping(self) -> None:
        with self._call("ping"):
            self._raw_db().client.admin.command("ping")
            self._recheck()  # and it is (still) an initialized indexgate store
