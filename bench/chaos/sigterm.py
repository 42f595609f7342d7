"""Scenarios ``sigterm``, ``sigterm_kombu`` and ``sigterm_rabbitmq``: SIGTERM workers mid-event.

What ``docker stop`` and Kubernetes do to a worker, repeated under a stream. The machinery
is ``sigkill.py``'s (two ``bench.chaos.probe`` workers, the probe markers, the kill loop):
the killer waits until a pool process is inside an intake task, waits a random moment in
its pre / run / post window, and SIGTERMs the *whole worker* instead of killing it. It
waits until the worker has exited (warm shutdown: the intake stops reading, the tasks in
flight finish, bounded by ``INDEXGATE_SHUTDOWN_TIMEOUT_S``, the production 30 s here), then
starts a replacement under a new node name, as a supervisor would.

A SIGTERM counts as *mid-event* if the marker read right after the signal still names the
task the killer saw (its phase then is the one reported). A marker still there after the
exit is a task the shutdown cut off (``cut_off``: only a task past the bound is). The row
keeps the production ``intake_claim_idle_s`` (60 s): a clean shutdown must leave no stream
entry pending for another worker to claim (``claimed_again`` counts the claims), so every
event is applied within the run without the claim.

- ``sigterm``: Redis, the funnel on indexgate's publisher (the intake stream);
- ``sigterm_kombu``: Redis, the funnel publishing with plain kombu to the topic exchange
  (the kombu door, moved into the stream by the pump);
- ``sigterm_rabbitmq``: RabbitMQ, the consumer bootstep on the durable intake queue.
"""

from __future__ import annotations

import statistics
from collections import Counter

from bench.chaos.common import Row
from bench.chaos.sigkill import _run


def run(broker: str = "redis", short: bool = True, seed: int = 21) -> Row:
    """Whole workers SIGTERMed mid-event on Redis, whatever ``broker`` says."""
    return _notes(_run("sigterm", "redis", whole=True, term=True, target=4 if short else 20, seed=seed))


def run_kombu(broker: str = "redis", short: bool = True, seed: int = 22) -> Row:
    """... on Redis while the funnel publishes with plain kombu."""
    return _notes(_run("sigterm_kombu", "redis", whole=True, term=True, kombu=True, target=4 if short else 20,
                       seed=seed))


def run_rabbitmq(broker: str = "rabbitmq", short: bool = True, seed: int = 23) -> Row:
    """... on RabbitMQ."""
    return _notes(_run("sigterm_rabbitmq", "rabbitmq", whole=True, term=True, target=4 if short else 20,
                       seed=seed))


def _notes(row: Row) -> Row:
    f = row.figures
    exits = Counter({int(k[5:]): v for k, v in f.items() if k.startswith("exit:")})
    seconds = f.get("shutdown_s") or [0.0]
    row.note(f"worker exit codes after SIGTERM: {dict(exits)}; SIGTERM to exit: min {min(seconds):.2f} s, median "
             f"{statistics.median(seconds):.2f} s, max {max(seconds):.2f} s (bound INDEXGATE_SHUTDOWN_TIMEOUT_S = "
             f"30 s); tasks cut off by the bound: {f.get('cut_off', 0)}; cold shutdowns: {f.get('cold', 0)}; "
             f"entries claimed again from a stopped worker: {f.get('claimed_again', 0)}")
    return row
