"""What the soaks measure besides RSS: the store's size while retention runs.

``Pruner`` runs the retention use case (``indexgate.retention``, what beat's ``retention``
task runs) every ``every_s`` seconds in the benchmark process against the worker's store,
with a retention of ``keep_s`` seconds for inbox keys, audit entries and dead letters, so a
minutes-long soak reaches the steady state a deployment reaches after its retention
(a day for the inbox by default). ``StoreMeter`` reads the SQLite file: pages in use (page
count less the free list), the file and its WAL on disk.

Bytes per event: before the first rows were old enough to prune, the least-squares slope
of the bytes in use over the events applied (the baseline: what the store kept per event
without retention, same run). After that the store holds the events of the last retention
window, so its size follows the event *rate*; ``kept_for_good`` fits the bytes in use to
both the events inside the window and the events applied so far, and the second
coefficient is what each event leaves behind for good (flat: about zero).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from indexgate.clock import utcnow
from indexgate.retention import Retention, RetentionPolicy
from indexgate.settings import Settings
from indexgate.store import open_store


class StoreMeter:
    def __init__(self, settings: Settings) -> None:
        url = settings.resolved_store_url
        self.path = Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None

    def sample(self) -> tuple[int, int]:
        """(bytes in use, bytes on disk incl. WAL); (0, 0) on MongoDB."""
        if self.path is None:
            return 0, 0
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            size, pages, free = (conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_size", "page_count",
                                                                                  "freelist_count"))
        finally:
            conn.close()
        wal = self.path.with_name(self.path.name + "-wal")
        return (pages - free) * size, self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)

    def rows(self) -> dict[str, int]:
        if self.path is None:
            return {}
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                    for t in ("inbox", "audit", "branches", "jobs", "dead_letters")}
        finally:
            conn.close()


class Pruner(threading.Thread):
    def __init__(self, settings: Settings, keep_s: float, every_s: float) -> None:
        super().__init__(daemon=True, name="pruner")
        self.store = open_store(settings)
        self.retention = Retention(self.store, RetentionPolicy(inbox_s=keep_s, audit_s=keep_s, dead_letter_s=keep_s,
                                                               interval_s=every_s), utcnow)
        self.every_s = every_s
        self.done = threading.Event()
        self.runs: list[tuple[float, int, int]] = []  # (seconds, inbox keys, audit entries) pruned
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self.done.wait(self.every_s):
            t0 = time.perf_counter()
            pruned = self.retention.run()
            self.runs.append((time.perf_counter() - t0, pruned.inbox, pruned.audit))
        self.store.close()

    def prune_all(self, settings: Settings) -> None:
        """One last run that prunes every inbox key, audit entry and dead letter there is: what
        stays is what the store keeps for good (the aggregates and their reference rows)."""
        store = open_store(settings)
        try:
            Retention(store, RetentionPolicy(inbox_s=0, audit_s=0, dead_letter_s=0, interval_s=3600),  # no gap
                      utcnow).run()
        finally:
            store.close()

    def describe(self) -> str:
        if not self.runs:
            return "no retention run"
        took = sorted(t for t, _, _ in self.runs)
        return (f"{len(self.runs)} retention runs pruned {sum(r[1] for r in self.runs)} inbox keys and "
                f"{sum(r[2] for r in self.runs)} audit entries; a run took {took[len(took) // 2] * 1000:.0f} ms "
                f"(median), {took[-1] * 1000:.0f} ms at most")


def slope(points: list[tuple[int, int]]) -> float:
    """Least-squares bytes per event over (events applied, bytes) points."""
    if len(points) < 3:
        return float("nan")
    mean_n = sum(n for n, _ in points) / len(points)
    mean_b = sum(b for _, b in points) / len(points)
    var = sum((n - mean_n) ** 2 for n, _ in points)
    return sum((n - mean_n) * (b - mean_b) for n, b in points) / var if var else float("nan")


def kept_for_good(samples: list[tuple[float, int, int]], window_s: float, since_s: float) -> tuple[float, float]:
    """(bytes each event leaves for good, bytes per event inside the window): least squares
    of ``used = a + w * (events in the last window_s) + k * (events so far)`` over the
    (seconds, events applied, bytes in use) samples from ``since_s`` on."""
    import numpy as np

    times = np.array([t for t, _, _ in samples])
    events = np.array([n for _, n, _ in samples], dtype=float)
    used = np.array([u for _, _, u in samples], dtype=float)
    inside = events - np.interp(times - window_s, times, events)  # over every sample, so the window is whole
    fit = times >= since_s
    if fit.sum() < 5:
        return float("nan"), float("nan")
    columns = np.column_stack([np.ones(int(fit.sum())), inside[fit], events[fit]])
    (_, per_window, per_event), *_ = np.linalg.lstsq(columns, used[fit], rcond=None)
    return float(per_event), float(per_window)
