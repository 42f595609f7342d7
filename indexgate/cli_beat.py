"""``indexgate beat status``: which beat holds the lease, with which fencing token, until when.

Every beat competes for one lease in the store (``indexgate.leases``, ``workers.beat``);
only its holder sends the sweeps. The status exits 0 while a live holder exists and 1 when
none does (no beat running, or the holder died and nobody took over yet): a probe for
"are the sweeps running somewhere". Whether one beat *process* is alive is Celery's own
probe: ``celery -A indexgate.workers inspect ping -d celerybeat@<host>``.
"""

from __future__ import annotations

import sys

import click

from indexgate.cli_common import EXIT_FAILURE, emit, guarded, service
from indexgate.leases import BEAT


@click.group()
def beat() -> None:
    """The beat lease: one beat sends sweeps, any others wait to take over."""


@beat.command("status")
@click.option("--json", "as_json", is_flag=True)
@guarded
def beat_status(as_json: bool) -> None:
    """The lease's holder, token and expiry. Exit 1 when no beat holds it; 4 when the store
    cannot answer."""
    svc = service()
    lease = svc.leases.current(BEAT)
    now = svc.clock()
    alive = lease is not None and lease.alive(now)
    if as_json:
        emit({"held": alive, "lease": lease.model_dump(mode="json") if lease else None,
              "expires_in_s": round((lease.expires_at - now).total_seconds(), 3) if lease else None})
    elif lease is None:
        click.echo("no beat has ever held the lease (no beat has run against this store)")
    else:
        left_s = (lease.expires_at - now).total_seconds()
        state = f"held, expires in {left_s:.1f} s" if alive else f"NOT held: expired {-left_s:.1f} s ago"
        click.echo(f"beat lease: {state}; holder {lease.holder}, fencing token {lease.token}, "
                   f"last renewed {lease.renewed_at.isoformat()}")
    if not alive:
        sys.exit(EXIT_FAILURE)
