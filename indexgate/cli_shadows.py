"""``indexgate shadows ...`` and ``indexgate index current``: shadow builds and the pointer."""

from __future__ import annotations

import sys

import click

from indexgate.cli_common import NAME, TEXT, emit, guarded, operator_name, service
from indexgate.outcomes import Status
from indexgate.shadow_service import status_json
from indexgate.switch_policy import SwitchResult
from indexgate.shadows import CHECKS


@click.group()
def shadows() -> None:
    """Shadow index builds and the atomic switch."""


@shadows.command("list")
@click.option("--json", "as_json", is_flag=True)
@guarded
def shadows_list(as_json: bool) -> None:
    """Every shadow build with its current state."""
    rows = [status_json(build, state) for build, state in service().shadows.builds()]
    if as_json:
        return emit(rows)
    if not rows:
        click.echo("no shadow builds")
    for row in rows:
        click.echo(f"{row['shadow_index_id']}  {row['branch_name']}:{row['index_type']}  {row['state']:<10} "
                   f"{row['build_progress_percent']:.0f}%  records={row['record_count']}  "
                   f"blackout_ms={row['blackout_ms']}")


@shadows.command("status")
@click.argument("ref", type=NAME)
@click.option("--json", "as_json", is_flag=True)
@guarded
def shadows_status(ref: str, as_json: bool) -> None:
    """One build (by shadow id or job id)."""
    row = service().shadows.status(ref)
    if as_json:
        return emit(row)
    for key, value in row.items():
        click.echo(f"{key:24} {value}")


def _print_switch(result: SwitchResult, as_json: bool) -> None:
    if as_json:
        emit(result.model_dump(mode="json"))
    else:
        click.echo(f"{result.status}: {result.detail}")
        for check in result.checks:
            click.echo(f"  {'ok  ' if check.passed else 'FAIL'} {check.check}: {check.detail}")
        if result.blackout_ms is not None:
            click.echo(f"  writes blocked {result.blackout_ms:.1f} ms (switch {result.switch_duration_ms or 0:.1f} ms), "
                       f"fencing token {result.fencing_token}")
    if result.status not in (Status.SWITCHED, Status.ROLLED_BACK):
        sys.exit(2)


@shadows.command("switch")
@click.argument("ref", type=NAME)
@click.option("--force", is_flag=True, help="Skip validation (never the atomicity).")
@click.option("--check", "checks", multiple=True, type=click.Choice(CHECKS), help="Validation checks (default: all).")
@click.option("--no-backup", is_flag=True, help="Do not keep the current index as a backup.")
@click.option("--json", "as_json", is_flag=True)
@guarded
def shadows_switch(ref: str, force: bool, checks: tuple[str, ...], no_backup: bool, as_json: bool) -> None:
    """Validate a BUILT shadow and switch it in atomically."""
    result = service().shadows.switch(ref, force=force, checks=checks or CHECKS, backup=not no_backup,
                                      actor=operator_name())
    _print_switch(result, as_json)


@shadows.command("cancel")
@click.argument("ref", type=NAME)
@click.option("--reason", type=TEXT, required=True)
@guarded
def shadows_cancel(ref: str, reason: str) -> None:
    """Cancel a build that has not been switched in."""
    outcome = service().shadows.cancel(ref, operator_name(), reason)
    click.echo(f"{outcome.status}: {outcome.detail}")


@shadows.command("rollback")
@click.argument("branch", type=NAME)
@click.argument("index_type", type=NAME)
@click.option("--reason", type=TEXT, required=True)
@click.option("--json", "as_json", is_flag=True)
@guarded
def shadows_rollback(branch: str, index_type: str, reason: str, as_json: bool) -> None:
    """Re-activate the previous index of BRANCH / INDEX_TYPE, atomically."""
    _print_switch(service().shadows.rollback(branch, index_type, operator_name(), reason), as_json)


@click.group()
def index() -> None:
    """The active index pointer readers use."""


@index.command("current")
@click.argument("branch", type=NAME)
@click.argument("index_type", type=NAME)
@click.option("--json", "as_json", is_flag=True)
@guarded
def index_current(branch: str, index_type: str, as_json: bool) -> None:
    """Which index is active for BRANCH / INDEX_TYPE (exit 2 if none)."""
    pointer = service().shadows.current(branch, index_type)
    if as_json:
        emit(pointer.model_dump(mode="json") if pointer else None)
    elif pointer:
        click.echo(f"{pointer.shadow_index_id}  {pointer.location}  switched_at={pointer.switched_at.isoformat()}  "
                   f"token={pointer.fencing_token}")
    else:
        click.echo(f"no active index for {branch} {index_type}")
    if pointer is None:
        sys.exit(2)
