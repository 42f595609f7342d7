"""``celery -A bench.chaos.probe worker``: the production app, plus a phase marker per event.

The chaos harness must SIGKILL a pool process *mid-event*, which it cannot see from outside:
an event takes a few milliseconds. This module imports the unchanged production app
(``workers.app``) and connects two Celery signals that only observe and wait:

- ``task_prerun``: write ``<CHAOS_PROBE_DIR>/<pid>`` = ``pre <task id>``, sleep a random
  0..CHAOS_PROBE_SLEEP_MS ms (the window *before* the effect), then ``run <task id>``;
- ``task_postrun``: write ``post <task id>``, sleep again (the window *after* the commit but
  before the parent acks: acks_late acks only when the result reaches the parent), then
  delete the marker.

The killer reads the marker, kills, and reads it again: a marker left behind by a dead
process says which phase the kill interrupted. Without ``CHAOS_PROBE_DIR`` nothing is
connected and the app is exactly ``workers.app``. No task, setting or retry policy changes.
"""

from __future__ import annotations

import os
import random
import time

from celery.signals import task_postrun, task_prerun

from indexgate.workers import app  # noqa: F401  (the app celery -A finds here)
from indexgate.workers.intake import INTAKE_TASKS

PROBE_DIR = os.environ.get("CHAOS_PROBE_DIR")
SLEEP_S = float(os.environ.get("CHAOS_PROBE_SLEEP_MS", "0")) / 1000.0


def _mark(text: str) -> None:
    path = os.path.join(PROBE_DIR, str(os.getpid()))
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)  # the killer never reads half a marker


def _pause() -> None:
    if SLEEP_S > 0:
        time.sleep(random.uniform(0, SLEEP_S))


if PROBE_DIR:

    @task_prerun.connect(weak=False)
    def _before(sender=None, task_id=None, **_kwargs) -> None:
        if getattr(sender, "name", None) not in INTAKE_TASKS:
            return
        _mark(f"pre {task_id}")
        _pause()
        _mark(f"run {task_id}")

    @task_postrun.connect(weak=False)
    def _after(sender=None, task_id=None, **_kwargs) -> None:
        if getattr(sender, "name", None) not in INTAKE_TASKS:
            return
        _mark(f"post {task_id}")
        _pause()
        try:
            os.unlink(os.path.join(PROBE_DIR, str(os.getpid())))
        except FileNotFoundError:
            pass
