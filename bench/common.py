"""What every benchmark shares: isolated settings, percentiles, figures and the report.

Absolute times drift on shared machines, so every figure is printed next to a baseline
measured in the same run (or, where the issue names one, a fixed reference such as the
seed's 10 s switch) and the ratio between them. Goals are reported as met or missed,
plainly; nothing here asserts.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from indexgate.settings import Settings

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
    return settings


def cleanup(settings: Settings) -> None:
    """Delete the run's queues and exchanges from the shared broker."""
    from kombu import Connection, Exchange, Queue

    with Connection(settings.broker_url) as conn:
        for name in (settings.intake_queue, settings.task_queue):
            try:
                Queue(name, channel=conn.channel()).delete()
            except Exception:  # never declared
                pass
        for name in (settings.funnel_exchange, settings.out_exchange):
            try:
                Exchange(name, channel=conn.channel()).delete()
            except Exception:
                pass


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0, "p50": float("nan"), "p99": float("nan"), "max": float("nan"), "mean": float("nan")}

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]

    return {"n": len(ordered), "p50": pct(0.50), "p99": pct(0.99), "max": ordered[-1],
            "mean": statistics.fmean(ordered)}


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
                   "samples": self.samples}
        (folder / "results.json").write_text(json.dumps(payload, indent=2))
        (folder / "RESULTS.md").write_text(self.markdown())
        self._histogram(folder / "latency.png")

    def markdown(self) -> str:
        lines = ["# indexgate benchmark results", "", f"Run {self.context.get('when', '')} on "
                 f"{self.context.get('machine', '')}.", "", f"Command: `{self.context.get('command', '')}`", "",
                 "| figure | value | baseline (same run) | ratio | goal | met |", "|---|---|---|---|---|---|"]
        for f in self.figures:
            lines.append(f"| {f.name} | {f.value:.3f} {f.unit} | {f.baseline_name}: {f.baseline:.3f} | "
                         f"{f.ratio:.3f} | {f.goal} | {'yes' if f.met else '**no**'} |")
        missed = [f for f in self.figures if not f.met]
        lines += ["", "## Goals missed", ""]
        lines += [f"- **{f.name}**: {f.note or 'see value'}" for f in missed] or ["None."]
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


def machine() -> str:
    import os

    return f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, " \
           f"Python {platform.python_version()}, {platform.platform()}"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
