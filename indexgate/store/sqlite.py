"""SQLite adapter: the embedded default, safe under several worker processes.

WAL lets readers (permission checks) run beside one writer; every write is one
``BEGIN IMMEDIATE`` transaction, so the compare-and-swap on ``branches.version``, the job
index, the audit/outbox rows and the idempotency key commit together or not at all.
``busy_timeout`` makes a writer wait for another process instead of failing at once; if the
file stays locked past it, or cannot be opened, callers get ``StoreUnavailable``.

The connection is opened lazily and re-opened after ``fork`` (a connection must never
cross a fork), so creating the object does no I/O. Only ``initialize`` creates the file;
every other verb opens it read-write-if-it-exists and refuses (``StoreNotInitialized``) a
missing file or one without indexgate's ``meta`` row. An open connection keeps reading a
file that was deleted or replaced since (it holds the old inode), so every transaction
first compares the path's device and inode with the ones opened (one ``stat``): a deleted
file is ``StoreNotInitialized``, a replaced one is opened and checked anew.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import quote

from indexgate.errors import DuplicateEvent, StoreNotInitialized, StoreUnavailable, VersionConflict
from indexgate.store.base import SCHEMA_VERSION, due_us, job_refs
from indexgate.store.sqlite_upkeep import SqliteUpkeep, incremental_vacuum_on, migrate
from indexgate.schemas.records import AuditEntry, BranchState, DeadLetter, EarlyEnd
from indexgate.schemas.shadows import IndexState

log = logging.getLogger(__name__)
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS branches (
    branch TEXT PRIMARY KEY, version INTEGER NOT NULL, has_locks INTEGER NOT NULL, doc TEXT NOT NULL,
    due_us INTEGER);
CREATE INDEX IF NOT EXISTS branches_with_locks ON branches(has_locks) WHERE has_locks = 1;
CREATE TABLE IF NOT EXISTS jobs (job_id TEXT PRIMARY KEY, branch TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inbox (key TEXT PRIMARY KEY, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, entry_id TEXT UNIQUE NOT NULL, at TEXT NOT NULL,
    branch TEXT, published INTEGER NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_unpublished ON audit(published, seq) WHERE published = 0;
CREATE INDEX IF NOT EXISTS audit_branch ON audit(branch, seq);
CREATE TABLE IF NOT EXISTS indexes (key TEXT PRIMARY KEY, version INTEGER NOT NULL, doc TEXT NOT NULL, due_us INTEGER);
CREATE TABLE IF NOT EXISTS index_refs (ref TEXT PRIMARY KEY, key TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS early_ends (job_id TEXT PRIMARY KEY, at REAL NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS early_ends_at ON early_ends(at);
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, token INTEGER NOT NULL, renewed_us INTEGER NOT NULL,
    doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, letter_id TEXT UNIQUE NOT NULL, at TEXT NOT NULL,
    doc TEXT NOT NULL);
"""
# after the columns they need exist (``_migrate`` adds them to stores created before)
INDEXES = """
CREATE INDEX IF NOT EXISTS branches_due ON branches(due_us) WHERE due_us IS NOT NULL;
CREATE INDEX IF NOT EXISTS indexes_due ON indexes(due_us) WHERE due_us IS NOT NULL;
CREATE INDEX IF NOT EXISTS index_refs_key ON index_refs(key);
"""


class SqliteStore(SqliteUpkeep):
    def __init__(self, path: Path, busy_timeout_s: float = 5.0, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self._file = os.fspath(self.path)
        self.busy_timeout_s = busy_timeout_s
        self.synchronous = synchronous
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._opened: tuple[int, int] | None = None  # (st_dev, st_ino) of the file the connection reads
        self._mutex = threading.RLock()

    # --- connection ---------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"

    def initialize(self) -> None:
        """Create the file, its tables and the ``meta`` row; bring a store created by an
        older version up to date (new columns, incremental auto-vacuum); idempotent. Tables,
        migration and the ``meta`` row commit in one transaction (SQLite's DDL is
        transactional), so a process killed meanwhile leaves no half-initialized store."""
        with self._mutex:
            self._drop()
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = self._open("rwc")
                try:
                    incremental_vacuum_on(conn, self.url)  # pragmas that cannot run inside a transaction
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        for statement in _statements(SCHEMA):
                            conn.execute(statement)
                        migrate(conn)
                        for statement in _statements(INDEXES):
                            conn.execute(statement)
                        conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                                     (str(SCHEMA_VERSION),))
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                    conn.execute("COMMIT")
                finally:
                    conn.close()
            except (sqlite3.Error, OSError) as exc:
                raise StoreUnavailable(f"cannot initialize the SQLite store {self.url}: {exc}") from exc

    def _open(self, mode: str) -> sqlite3.Connection:
        uri = f"file:{quote(str(self.path.absolute()))}?mode={mode}"
        conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout_s, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
        return conn

    def _identity(self) -> tuple[int, int] | None:
        """The file's (device, inode), or None when it does not exist: one ``stat`` (a few µs)."""
        try:
            stat = os.stat(self._file)
        except FileNotFoundError:
            return None
        return stat.st_dev, stat.st_ino

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid() and self._identity() != self._opened:
            self._drop()  # deleted or replaced under the open connection: never read the old inode
        if self._conn is None or self._pid != os.getpid():
            identity = self._identity()  # before opening: a replacement in between is caught next time
            if identity is None:
                raise StoreNotInitialized(
                    f"no indexgate store at {self.url}: the file does not exist (nothing was created; it may "
                    "have been deleted or moved); check INDEXGATE_STORE_URL, or run `indexgate setup` to create it")
            conn = self._open("rw")
            try:
                initialized = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            except sqlite3.OperationalError:  # no meta table: not an initialized indexgate store
                initialized = None
            if not initialized:
                conn.close()
                raise StoreNotInitialized(
                    f"{self.url} exists but is not an initialized indexgate store; check INDEXGATE_STORE_URL, "
                    "or run `indexgate setup` to initialize it")
            self._conn, self._pid, self._opened = conn, os.getpid(), identity
        return self._conn

    @contextmanager
    def _tx(self, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction; driver errors leave as ``StoreUnavailable``."""
        with self._mutex:
            try:
                conn = self._connection()
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                self._commit(conn, write)
            except (sqlite3.Error, OSError) as exc:
                self._drop()
                raise StoreUnavailable(f"SQLite store {self.url} unavailable: {exc}") from exc

    def _commit(self, conn: sqlite3.Connection, write: bool) -> None:
        """COMMIT: where a write waits for the disk (the benchmarks time this one call)."""
        conn.execute("COMMIT")

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
        self._conn = None

    def close(self) -> None:
        with self._mutex:
            self._drop()

    def ping(self) -> None:
        with self._tx(write=False) as conn:  # a real read: ``SELECT 1`` takes no lock and answers even when locked
            conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()

    # --- aggregates ---------------------------------------------------------------

    def load(self, branch: str) -> BranchState | None:
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT doc FROM branches WHERE branch = ?", (branch,)).fetchone()
        return BranchState.model_validate_json(row[0]) if row else None

    def save(self, state: BranchState, audit: Sequence[AuditEntry], inbox_key: str | None = None) -> int:
        new = state.model_copy(update={"version": state.version + 1})
        with self._tx(write=True) as conn:
            self._cas(conn, "branches", "branch", state.branch, state.version, new.model_dump_json(),
                      {"has_locks": int(bool(new.locks)), "due_us": due_us(new.due_at)})
            conn.executemany(
                "INSERT OR IGNORE INTO jobs (job_id, branch) VALUES (?, ?)",
                [(job_id, state.branch) for job_id in job_refs(new, audit)],
            )
            self._append(conn, audit, inbox_key)
        return new.version

    def load_index(self, key: str) -> IndexState | None:
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT doc FROM indexes WHERE key = ?", (key,)).fetchone()
        return IndexState.model_validate_json(row[0]) if row else None

    def save_index(self, state: IndexState, audit: Sequence[AuditEntry], inbox_key: str | None = None) -> int:
        new = state.model_copy(update={"version": state.version + 1})
        with self._tx(write=True) as conn:
            self._cas(conn, "indexes", "key", state.key, state.version, new.model_dump_json(),
                      {"due_us": due_us(new.due_at)})
            refs = {ref for build in new.builds for ref in (build.job_id, build.shadow_index_id)}
            conn.executemany("INSERT OR IGNORE INTO index_refs (ref, key) VALUES (?, ?)", [(r, state.key) for r in refs])
            known = {row[0] for row in conn.execute("SELECT ref FROM index_refs WHERE key = ?", (state.key,))}
            conn.executemany("DELETE FROM index_refs WHERE ref = ?", [(r,) for r in known - refs])  # forgotten builds
            self._append(conn, audit, inbox_key)
        return new.version

    def index_of(self, ref: str) -> str | None:
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT key FROM index_refs WHERE ref = ?", (ref,)).fetchone()
        return row[0] if row else None

    def indexes(self) -> list[IndexState]:
        with self._tx(write=False) as conn:
            rows = conn.execute("SELECT doc FROM indexes ORDER BY key").fetchall()
        return [IndexState.model_validate_json(row[0]) for row in rows]

    @staticmethod
    def _cas(conn: sqlite3.Connection, table: str, key_col: str, key: str, version: int, doc: str,
             extra: dict[str, int | None]) -> None:
        """Insert at version 0, else update only if the stored version is still ``version``."""
        if version == 0:
            names = ", ".join([key_col, "version", "doc", *extra])
            marks = ", ".join("?" * (3 + len(extra)))
            cur = conn.execute(f"INSERT OR IGNORE INTO {table} ({names}) VALUES ({marks})",
                               (key, 1, doc, *extra.values()))
        else:
            sets = ", ".join(["version = ?", "doc = ?", *(f"{c} = ?" for c in extra)])
            cur = conn.execute(f"UPDATE {table} SET {sets} WHERE {key_col} = ? AND version = ?",
                               (version + 1, doc, *extra.values(), key, version))
        if cur.rowcount != 1:
            raise VersionConflict(f"{table} {key} changed since version {version}")

    def record(self, audit: Sequence[AuditEntry], inbox_key: str | None = None) -> None:
        with self._tx(write=True) as conn:
            self._append(conn, audit, inbox_key)

    @staticmethod
    def _append(conn: sqlite3.Connection, audit: Sequence[AuditEntry], inbox_key: str | None) -> None:
        conn.executemany(
            "INSERT OR IGNORE INTO audit (entry_id, at, branch, published, doc) VALUES (?, ?, ?, ?, ?)",
            [(e.entry_id, e.at.isoformat(), e.branch, int(e.published), e.model_dump_json()) for e in audit],
        )
        if inbox_key is not None:
            try:  # a plain INSERT: a concurrent delivery of the same event loses here, whole
                conn.execute("INSERT INTO inbox (key, at) VALUES (?, datetime('now'))", (inbox_key,))
            except sqlite3.IntegrityError as exc:
                raise DuplicateEvent(f"event {inbox_key} was already applied") from exc

    def seen(self, inbox_key: str) -> bool:
        with self._tx(write=False) as conn:
            return conn.execute("SELECT 1 FROM inbox WHERE key = ?", (inbox_key,)).fetchone() is not None

    def branch_of_job(self, job_id: str) -> str | None:
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT branch FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return row[0] if row else None

    def remember_end(self, end: EarlyEnd, audit: Sequence[AuditEntry], inbox_key: str | None, keep: int,
                     since: datetime) -> None:
        with self._tx(write=True) as conn:
            conn.execute("INSERT OR IGNORE INTO early_ends (job_id, at, doc) VALUES (?, ?, ?)",
                         (end.job_id, end.at.timestamp(), end.model_dump_json()))
            conn.execute("DELETE FROM early_ends WHERE at < ?", (since.timestamp(),))
            conn.execute("DELETE FROM early_ends WHERE job_id IN "
                         "(SELECT job_id FROM early_ends ORDER BY at DESC LIMIT -1 OFFSET ?)", (keep,))
            self._append(conn, audit, inbox_key)

    def early_end(self, job_id: str, since: datetime) -> EarlyEnd | None:
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT doc FROM early_ends WHERE job_id = ? AND at >= ?",
                               (job_id, since.timestamp())).fetchone()
        return EarlyEnd.model_validate_json(row[0]) if row else None

    def branches_with_locks(self) -> list[BranchState]:
        with self._tx(write=False) as conn:
            rows = conn.execute("SELECT doc FROM branches WHERE has_locks = 1 ORDER BY branch").fetchall()
        return [BranchState.model_validate_json(row[0]) for row in rows]

    # --- audit / outbox -----------------------------------------------------------

    def audit(self, limit: int = 100, branch: str | None = None) -> list[AuditEntry]:
        query = "SELECT doc, published FROM audit {} ORDER BY seq DESC LIMIT ?"
        with self._tx(write=False) as conn:
            if branch is None:
                rows = conn.execute(query.format(""), (limit,)).fetchall()
            else:
                rows = conn.execute(query.format("WHERE branch = ?"), (branch, limit)).fetchall()
        return [_audit(doc, published) for doc, published in rows]

    def unpublished(self, limit: int = 500) -> list[AuditEntry]:
        with self._tx(write=False) as conn:
            rows = conn.execute(
                "SELECT doc, published FROM audit WHERE published = 0 ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [_audit(doc, published) for doc, published in rows]

    def mark_published(self, entry_ids: Sequence[str]) -> None:
        with self._tx(write=True) as conn:
            conn.executemany("UPDATE audit SET published = 1 WHERE entry_id = ?", [(i,) for i in entry_ids])

    # --- dead letters -------------------------------------------------------------

    def add_dead_letter(self, letter: DeadLetter) -> None:
        with self._tx(write=True) as conn:
            conn.execute(
                "INSERT OR IGNORE INTO dead_letters (letter_id, at, doc) VALUES (?, ?, ?)",
                (letter.letter_id, letter.at.isoformat(), letter.model_dump_json()),
            )

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._tx(write=False) as conn:
            rows = conn.execute("SELECT doc FROM dead_letters ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [DeadLetter.model_validate_json(row[0]) for row in rows]

    def dead_letter(self, letter_id: str) -> DeadLetter | None:
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT doc FROM dead_letters WHERE letter_id = ?", (letter_id,)).fetchone()
        return DeadLetter.model_validate_json(row[0]) if row else None

    def mark_replayed(self, letter_id: str, at: datetime, by: str) -> None:
        with self._tx(write=True) as conn:  # read and rewrite in one write transaction: replays never lost
            row = conn.execute("SELECT doc FROM dead_letters WHERE letter_id = ?", (letter_id,)).fetchone()
            if row is None:
                return
            letter = DeadLetter.model_validate_json(row[0])
            marked = letter.model_copy(update={"replayed_at": at, "replayed_by": by, "replays": letter.replays + 1})
            conn.execute("UPDATE dead_letters SET doc = ? WHERE letter_id = ?", (marked.model_dump_json(), letter_id))


def _statements(script: str) -> list[str]:
    """The statements of a schema script (none of them holds a ``;`` of its own)."""
    return [statement.strip() for statement in script.split(";") if statement.strip()]


def _audit(doc: str, published: int) -> AuditEntry:
    return AuditEntry.model_validate_json(doc).model_copy(update={"published": bool(published)})
