"""What every benchmark shares: isolated settings, percentiles, figures and the report.

Absolute times drift on shared machines, so every figure is printed next to a baseline
measured in the same run (or, where the issue names one, a fixed reference such as the
seed's 10 s switch) and the ratio between them. Goals are reported as met or missed,
plainly; nothing here asserts.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from indexgate.settings import Settings
from indexgate.store import initialize_store

BROKERS = {"redis": "redis://127.0.0.1:6379/13", "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//"}


def bench_settings(data_dir: Path, broker: str, **overrides) -> Settings:
    """Settings on a real broker with names no other run uses, and the embedded store
    unless ``MONGODB_URL`` is set (then MongoDB)."""
    import os

    suffix = uuid.uuid4().hex[:8]
    store_url = os.environ.get("MONGODB_URL")
    if store_url:
        store_url = store_url.rstrip("/") + f"/indexgate_bench_{suffix}"
    settings = Settings(
        data_dir=data_dir, broker_url=BROKERS.get(broker, broker), store_url=store_url,
        funnel_exchange=f"bench.funnel.{suffix}", intake_queue=f"bench.intake.{suffix}",
        task_queue=f"bench.tasks.{suffix}", out_exchange=f"bench.out.{suffix}", **overrides,
    )
    settings.ensure_data_dirs()
    initialize_store(settings)
    return settings


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan"), "mean": float("nan")}

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]

    return {"n": len(ordered), "p50": pct(0.50), "p99": pct(0.99), "max": ordered[-1],
            "mean": statistics.fmean(ordered)}


def timed(fn: Callable[[], object], n: int) -> list[float]:
    """``n`` calls of ``fn``, each one's duration in ms."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


def wait_until(predicate: Callable[[], object], timeout_s: float = 60.0, every_s: float = 0.002) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"benchmark condition not reached within {timeout_s} s")


@dataclass
class Figure:
    """One measured number beside its baseline."""

    name: str
    value: float
    unit: str
    baseline_name: str
    baseline: float
    goal: str
    met: bool
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("nan")


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)
    samples: dict[str, list[float]] = field(default_factory=dict)  # for histograms
    context: dict[str, str] = field(default_factory=dict)

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)
        mark = "met" if figure.met else "MISSED"
        print(f"  {figure.name:<44} {figure.value:>12.3f} {figure.unit:<6} | {figure.baseline_name}: "
              f"{figure.baseline:.3f} | ratio {figure.ratio:.3f} | goal {figure.goal}: {mark}"
              + (f" ({figure.note})" if figure.note else ""), flush=True)

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        payload = {"context": self.context, "figures": [asdict(f) | {"ratio": f.ratio} for f in self.figures],
                   "samples": {k: [round(v, 4) for v in values] for k, values in self.samples.items()}}
        (folder / "results.json").write_text(json.dumps(payload, indent=2))
        (folder / "RESULTS.md").write_text(self.markdown())
        self._histogram(folder / "latency.png")

    def write_section(self, folder: Path, name: str) -> None:
        """Put this run into section ``## name`` of the existing ``RESULTS.md`` (replacing an
        earlier run of that section; the rest of the report stays) and ``results.json``."""
        folder.mkdir(parents=True, exist_ok=True)
        md, js = folder / "RESULTS.md", folder / "results.json"
        old = md.read_text() if md.exists() else "# indexgate benchmark results\n"
        heading = f"\n## {name}\n"
        if heading in old:
            head, _, rest = old.partition(heading)
            following = rest.find("\n## Section: ")
            old = head + (rest[following:] if following >= 0 else "\n")
        body = self.markdown(level="###").split("\n", 2)[2]  # without the report's own title
        md.write_text(old.rstrip("\n") + "\n" + heading + "\n" + body)
        payload = json.loads(js.read_text()) if js.exists() else {}
        payload.setdefault("sections", {})[name] = {"context": self.context,
                                                    "figures": [asdict(f) | {"ratio": f.ratio} for f in self.figures]}
        js.write_text(json.dumps(payload, indent=2))

    def markdown(self, level: str = "##") -> str:
        ctx = self.context
        lines = ["# indexgate benchmark results", "",
                 f"Run {ctx.get('when', '')} on **{ctx.get('machine', '')}**.", "",
                 f"Command: `{ctx.get('command', '')}`", "",
                 f"Broker: {ctx.get('broker', '')}; store: {ctx.get('store', '')}; "
                 f"suites: {ctx.get('suites', '')}; took {ctx.get('duration_s', '?')} s; load average at start "
                 f"{ctx.get('load average at start', '?')} (other work on the machine shows in each note's CPU "
                 "split as 'rest of the machine').", "",
                 "Absolute times drift on a shared machine, so every figure stands beside a baseline "
                 "measured in the same run; the ratio is value / baseline. Goals are reported, never asserted.",
                 "", "| figure | value | baseline (same run) | ratio | goal | met |", "|---|---|---|---|---|---|"]
        for f in self.figures:
            ratio = f"{f.ratio:.3f}" if not 0 < abs(f.ratio) < 0.001 else f"{f.ratio:.1e}"
            lines.append(f"| {f.name} | {f.value:.3f} {f.unit} | {f.baseline_name}: {f.baseline:.3f} | "
                         f"{ratio} | {f.goal} | {'yes' if f.met else '**no**'} |")
        missed = [f for f in self.figures if not f.met]
        lines += ["", f"{level} Goals missed", ""]
        lines += [f"- **{f.name}**: {f.note or 'see value'}" for f in missed] or ["None."]
        notes = [f for f in self.figures if f.met and f.note]
        if notes:
            lines += ["", f"{level} Notes", ""]
            lines += [f"- **{f.name}**: {f.note}" for f in notes]
        if ctx.get("errors"):
            lines += ["", f"{level} Suites that failed", "", ctx["errors"]]
        if level == "##":
            lines += ["", "![latency histograms](latency.png)", ""]
        return "\n".join(lines)

    def _histogram(self, path: Path) -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("  (matplotlib not installed: no histogram; pip install -e '.[bench]')")
            return
        series = {k: v for k, v in self.samples.items() if v}
        if not series:
            return
        fig, axes = plt.subplots(len(series), 1, figsize=(8, 2.6 * len(series)), squeeze=False)
        for ax, (name, values) in zip(axes[:, 0], series.items()):
            ax.hist(values, bins=50, color="#4477aa")
            stats = percentiles(values)
            ax.axvline(stats["p50"], color="#228833", label=f"p50 {stats['p50']:.2f}")
            ax.axvline(stats["p99"], color="#ee6677", label=f"p99 {stats['p99']:.2f}")
            ax.set_title(name)
            ax.set_xlabel("ms")
            ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)


# --- events as the funnel sends them ---------------------------------------------------

SOURCE = "indexgate-bench"


def event_key(event) -> str:
    """The store's idempotency key of a published event (``store.seen`` takes it)."""
    from indexgate.events.decode import event_key as key_of

    return key_of(event.get_source(), event.get_id())


def started(job: str, branch: str, resource_types: list[str], **data) -> "object":
    from indexgate.events.publisher import funnel_event

    return funnel_event("com.oms.indexing.started", {"job_id": job, "branch": branch,
                                                      "resource_types": resource_types, **data}, source=SOURCE)


def heartbeat(job: str, n: int, tag: str) -> "object":
    from indexgate.events.publisher import funnel_event

    return funnel_event("com.oms.indexing.heartbeat", {"job_id": job, "progress_percent": n % 100},
                        source=SOURCE, event_id=f"{tag}-{n:07d}")


def completed(job: str) -> "object":
    from indexgate.events.publisher import funnel_event

    return funnel_event("com.oms.indexing.completed", {"job_id": job, "record_count": 1}, source=SOURCE)


class SeenWatcher:
    """Tells when every key of a list is ``seen`` in the store, cheaply: keys are checked
    oldest first and each poll stops at the first one not yet applied, so every key is
    read about once however long the run (prefork may apply a few out of order; they are
    simply found when the front reaches them)."""

    def __init__(self, store, keys: list[str]) -> None:
        self.store = store
        self.keys = keys
        self.front = 0

    def advance(self) -> int:
        while self.front < len(self.keys) and self.store.seen(self.keys[self.front]):
            self.front += 1
        return self.front

    def wait_all(self, timeout_s: float, every_s: float = 0.005) -> float:
        """Block until all keys are seen; returns ``time.perf_counter()`` at that moment."""
        deadline = time.monotonic() + timeout_s
        while self.advance() < len(self.keys):
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.front} of {len(self.keys)} events applied within {timeout_s:.0f} s")
            time.sleep(every_s)
        return time.perf_counter()


# --- where the time goes ---------------------------------------------------------------


class TimedStore:
    """A store proxy adding up the wall time of each store verb (in this process)."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str):
        value = getattr(self._inner, name)
        if not callable(value) or name.startswith("_"):
            return value

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
                self.calls[name] = self.calls.get(name, 0) + 1

        return timed


def profiled_sqlite_store(path: Path, synchronous: str = "FULL"):
    """An embedded store that also adds up the time of its ``COMMIT`` statements (where
    SQLite waits for the disk) apart from everything else it does."""
    from indexgate.store.sqlite import SqliteStore

    class ProfiledSqliteStore(SqliteStore):
        commit_s = 0.0
        commits = 0

        def _commit(self, conn, write: bool) -> None:
            t0 = time.perf_counter()
            super()._commit(conn, write)
            if write:
                self.commit_s += time.perf_counter() - t0
                self.commits += 1

    store = ProfiledSqliteStore(path, synchronous=synchronous)
    store.initialize()
    return store


class CpuMeter:
    """CPU seconds spent by the worker's main process, its pool children and this process
    between ``start`` and ``stop`` (psutil; empty without it)."""

    def __init__(self, procs, broker_port: int | None = None) -> None:
        self.procs = procs
        self.before: dict[str, float] = {}
        self.wall = 0.0
        self.broker_pid = broker_pid(broker_port) if broker_port else None

    def _sample(self) -> dict[str, float]:
        try:
            import psutil
        except ImportError:
            return {}
        out = {"worker main": 0.0, "pool children": 0.0, "bench process": 0.0}
        for proc in self.procs:
            try:
                main = psutil.Process(proc.pid)
                t = main.cpu_times()
                out["worker main"] += t.user + t.system
                for child in main.children(recursive=True):
                    c = child.cpu_times()
                    out["pool children"] += c.user + c.system
            except psutil.Error:
                pass
        t = psutil.Process().cpu_times()
        out["bench process"] = t.user + t.system
        if self.broker_pid:
            try:
                t = psutil.Process(self.broker_pid).cpu_times()
                out["broker server"] = t.user + t.system
            except psutil.Error:
                pass
        t = psutil.cpu_times()
        out["machine"] = sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) \
            - getattr(t, "guest_nice", 0.0)
        return out

    def start(self) -> "CpuMeter":
        self.before = self._sample()
        self.wall = time.perf_counter()
        return self

    def stop(self) -> dict[str, float]:
        after = self._sample()
        wall = time.perf_counter() - self.wall
        used = {k: after[k] - self.before.get(k, 0.0) for k in after}
        return used | {"wall": wall}

    @staticmethod
    def describe(used: dict[str, float]) -> str:
        if len(used) <= 1:
            return "CPU split unknown (psutil not installed)"
        wall = used["wall"]
        ours = {k: v for k, v in used.items() if k not in ("wall", "machine")}
        parts = [f"{k} {v:.2f} s" for k, v in ours.items()]
        others = max(0.0, used.get("machine", 0.0) - sum(ours.values()))
        return (f"CPU over {wall:.2f} s wall: " + ", ".join(parts) + f", rest of the machine {others:.2f} s "
                f"(machine busy {used.get('machine', 0.0) / wall:.2f} of {os.cpu_count()} cores)")


def broker_pid(port: int) -> int | None:
    """The pid of the local server listening on ``port`` (for its CPU time), if visible."""
    try:
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return conn.pid
    except Exception:  # not permitted, or psutil missing: the split just lacks the broker
        return None
    return None


def worker_rss(procs) -> tuple[int, int]:
    """Resident set size (bytes) of the worker main processes and of all their children."""
    import psutil

    mains = children = 0
    for proc in procs:
        try:
            main = psutil.Process(proc.pid)
            mains += main.memory_info().rss
            for p in main.children(recursive=True):
                try:
                    children += p.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
    return mains, children


def machine() -> str:
    import os

    return f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, " \
           f"Python {platform.python_version()}, {platform.platform()}"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
