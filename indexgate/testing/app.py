"""``celery -A indexgate.testing.app worker``: the production app plus test-only hooks.

- ``indexgate.noop``: a task that does nothing, the throughput benchmark's baseline, with
  the production tasks' delivery settings;
- ``KILL_AT_ENV`` (a switch step name, e.g. ``swapped``): the worker SIGKILLs itself when a
  switch reaches that step, so the crash tests can prove every step is safe to die at;
- ``STALL_ENV`` (``<pre|post>:<seconds>:<text>``): an event task whose hand-off contains
  ``<text>`` (an event or job id) sleeps that long before its effect (``pre``) or after its
  commit, before the ack (``post``), after writing ``<data_dir>/stalled``, so the shutdown
  tests can hold a task past ``INDEXGATE_SHUTDOWN_TIMEOUT_S``.

The variables are deliberately not ``INDEXGATE_*``: they are not settings, and the production
app refuses unknown ``INDEXGATE_*`` names.
"""

from __future__ import annotations

import json
import os
import signal
import time

from celery.signals import task_postrun, task_prerun

from indexgate.workers.app import create_app
from indexgate.workers.intake import INTAKE_TASKS

KILL_AT_ENV = "TESTING_KILL_AT_SWITCH_STEP"
STALL_ENV = "TESTING_STALL_EVENT"
STALLED_FILE = "stalled"  # in data_dir: written when a task starts stalling ("<phase> <pid>")


def _kill_at(step: str | None):
    if not step:
        return None

    def on_step(name: str) -> None:
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)

    return on_step


def _stall_on(spec: str | None) -> None:
    """Connect the ``STALL_ENV`` hook (nothing without the variable)."""
    if not spec:
        return
    phase, seconds, text = spec.split(":", 2)
    if phase not in ("pre", "post"):
        raise ValueError(f"{STALL_ENV}: phase must be pre or post, got {phase!r}")

    def stall(sender=None, args=None, **_) -> None:
        if getattr(sender, "name", None) in INTAKE_TASKS and text in json.dumps(args):
            marker = app.indexgate_settings.data_dir / STALLED_FILE  # type: ignore[attr-defined]
            marker.write_text(f"{phase} {os.getpid()}")
            time.sleep(float(seconds))

    (task_prerun if phase == "pre" else task_postrun).connect(stall, weak=False)


app = create_app(on_switch_step=_kill_at(os.environ.get(KILL_AT_ENV)))
_stall_on(os.environ.get(STALL_ENV))


@app.task(name="indexgate.noop", ignore_result=True, shared=False, acks_late=True)
def noop(*_args) -> None:
    """Does nothing: the baseline of the throughput benchmark, with the same settings."""
