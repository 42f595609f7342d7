"""What the SQLite adapter does besides the aggregates' writes: the due listings the sweeps
read, retention (pruning from the oldest rows, giving the space back, markers), leases and bringing
a store created by an older version up to date. A mixin of ``SqliteStore``: it uses the
store's ``_tx`` (one transaction, driver errors as ``StoreUnavailable``) and ``_connection``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from itertools import takewhile

from indexgate.errors import StoreUnavailable
from indexgate.schemas.records import Lease
from indexgate.store.base import due_us

log = logging.getLogger(__name__)

# columns added since the first schema: (table, column, type, which existing rows are due at once)
ADDED_COLUMNS = (("branches", "due_us", "INTEGER", "has_locks = 1"), ("indexes", "due_us", "INTEGER", "1"))
PRUNE_CHUNK = 2000  # rows deleted per write transaction: other writers wait for one chunk at most
EPOCH_ISO = "1970-01-01T00:00:00+00:00"  # "due now" for rows written before due times
INBOX_AT = "%Y-%m-%d %H:%M:%S"  # SQLite's datetime('now'), which stamps inbox keys


class SqliteUpkeep:
    url: str
    _mutex: threading.RLock
    _tx: Callable[..., AbstractContextManager[sqlite3.Connection]]
    _connection: Callable[[], sqlite3.Connection]
    _drop: Callable[[], None]

    def branches_due(self, now: datetime) -> list[str]:
        return self._due("branches", "branch", now)

    def indexes_due(self, now: datetime) -> list[str]:
        return self._due("indexes", "key", now)

    def _due(self, table: str, key_col: str, now: datetime) -> list[str]:
        with self._tx(write=False) as conn:
            rows = conn.execute(f"SELECT {key_col} FROM {table} WHERE due_us <= ? ORDER BY due_us",
                                (due_us(now),)).fetchall()
        return [row[0] for row in rows]

    def prune_inbox(self, before: datetime) -> int:
        return self._prune_oldest("inbox", "rowid", _utc(before).strftime(INBOX_AT))

    def prune_audit(self, before: datetime) -> int:
        return self._prune_oldest("audit", "seq", _utc(before).isoformat(), deletable="published = 1")

    def prune_dead_letters(self, before: datetime) -> int:
        return self._prune_oldest("dead_letters", "seq", _utc(before).isoformat())

    def _prune_oldest(self, table: str, order: str, cutoff: str, deletable: str = "1") -> int:
        """Delete rows stamped before ``cutoff`` from the front of ``table``: ``order`` follows
        insertion, and so the stamp, so the scan stops at the first row not older than the
        cutoff (no index on the stamp needed; the cost follows the rows pruned). Rows for which
        ``deletable`` is false are kept. One chunk per transaction, so writers wait little."""
        removed, after = 0, -1
        while True:
            with self._tx(write=True) as conn:
                rows = conn.execute(f"SELECT {order}, at < ?, {deletable} FROM {table} WHERE {order} > ? "
                                    f"ORDER BY {order} LIMIT ?", (cutoff, after, PRUNE_CHUNK)).fetchall()
                old = list(takewhile(lambda row: row[1], rows))
                doomed = [(row[0],) for row in old if row[2]]
                conn.executemany(f"DELETE FROM {table} WHERE {order} = ?", doomed)
            removed += len(doomed)
            if len(old) < PRUNE_CHUNK:
                return removed
            after = old[-1][0]

    def reclaim_space(self) -> None:
        """Hand the pages pruned rows freed back to the file system (auto_vacuum=INCREMENTAL);
        until then SQLite reuses them for new rows anyway."""
        with self._mutex:
            try:
                # executescript steps the pragma to the end; execute() frees a single page
                self._connection().executescript("PRAGMA incremental_vacuum;")
            except sqlite3.Error as exc:
                self._drop()
                raise StoreUnavailable(f"SQLite store {self.url} unavailable: {exc}") from exc

    def marker(self, name: str) -> datetime | None:
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (f"marker:{name}",)).fetchone()
        return datetime.fromisoformat(row[0]) if row else None

    def set_marker(self, name: str, at: datetime) -> None:
        with self._tx(write=True) as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (f"marker:{name}", at.isoformat()))


    def lease(self, name: str) -> Lease | None:
        with self._tx(write=False) as conn:
            row = conn.execute("SELECT doc FROM leases WHERE name = ?", (name,)).fetchone()
        return Lease.model_validate_json(row[0]) if row else None

    def swap_lease(self, current: Lease | None, new: Lease) -> bool:
        """One conditional write: a version of a lease is its (token, renewed_at)."""
        values = (new.token, due_us(new.renewed_at), new.model_dump_json(), new.name)
        with self._tx(write=True) as conn:
            if current is None:
                cursor = conn.execute("INSERT OR IGNORE INTO leases (token, renewed_us, doc, name) VALUES (?, ?, ?, ?)",
                                      values)
            else:
                cursor = conn.execute("UPDATE leases SET token = ?, renewed_us = ?, doc = ? WHERE name = ? AND "
                                      "token = ? AND renewed_us = ?", (*values, current.token,
                                                                        due_us(current.renewed_at)))
            return cursor.rowcount == 1


def _utc(at: datetime) -> datetime:
    return at.astimezone(timezone.utc)


def incremental_vacuum_on(conn: sqlite3.Connection, url: str) -> None:
    """``auto_vacuum=INCREMENTAL`` lets ``reclaim_space`` shrink the file after a prune. The
    mode takes effect on a new file before its first table; a store created before it is
    rebuilt once by ``VACUUM`` (time and space like the file's size). If other processes keep
    it busy, it stays as it is (pruned pages are still reused) and the next initialization
    tries again."""
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
        return
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    if conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]:
        try:
            conn.execute("VACUUM")
            log.warning("SQLite store %s rebuilt once with auto_vacuum=INCREMENTAL (pruned space is now returned)",
                        url)
        except sqlite3.OperationalError as exc:
            log.warning("SQLite store %s not switched to auto_vacuum=INCREMENTAL now (%s); pruned space is still "
                        "reused, and the next initialization tries again", url, exc)


def migrate(conn: sqlite3.Connection) -> None:
    """Add the columns a store created by an older version lacks. Due times start "due now"
    where something may be due, so the first sweep computes the real ones."""
    for table, column, sql_type, due_now in ADDED_COLUMNS:
        if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}")
            conn.execute(f"UPDATE {table} SET {column} = 0, doc = json_set(doc, '$.due_at', ?) WHERE {due_now}",
                         (EPOCH_ISO,))


