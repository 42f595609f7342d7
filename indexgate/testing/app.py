"""``celery -A indexgate.testing.app worker``: the production app plus test-only hooks.

- ``indexgate.noop``: a task that does nothing, the throughput benchmark's baseline, with
  the production tasks' delivery settings;
- ``KILL_AT_ENV`` (a switch step name, e.g. ``swapped``): the worker SIGKILLs itself when a
  switch reaches that step, so the crash tests can prove every step is safe to die at.

The variable is deliberately not ``INDEXGATE_*``: it is not a setting, and the production
app refuses unknown ``INDEXGATE_*`` names.
"""

from __future__ import annotations

import os
import signal

from indexgate.workers.app import create_app

KILL_AT_ENV = "TESTING_KILL_AT_SWITCH_STEP"


def _kill_at(step: str | None):
    if not step:
        return None

    def on_step(name: str) -> None:
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)

    return on_step


app = create_app(on_switch_step=_kill_at(os.environ.get(KILL_AT_ENV)))


@app.task(name="indexgate.noop", ignore_result=True, shared=False, acks_late=True)
def noop(*_args) -> None:
    """Does nothing: the baseline of the throughput benchmark, with the same settings."""
