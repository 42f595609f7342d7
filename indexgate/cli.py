"""The operator CLI, ``indexgate``: thin over the service, ``--json`` on every read.

Exit codes: 0 ok / allowed, 1 unexpected failure, 2 bad request (unknown lock, bad
argument), 3 denied (``check``), 4 store unreachable, 5 broker unreachable, 6 configuration
error - so a script never confuses "denied", "expired" and "unknown".
"""

from __future__ import annotations

import json
import sys

import click

from indexgate.cli_common import (
    EXIT_BAD_REQUEST,
    EXIT_DENIED,
    LIMIT,
    NAME,
    PORT,
    SECONDS,
    TEXT,
    Tool,
    load_settings,
    emit,
    guarded,
    lock_json,
    operator_name,
    service,
)
from indexgate.cli_beat import beat
from indexgate.cli_intake import intake
from indexgate.cli_shadows import index, shadows
from indexgate.permissions import whole_branch
from indexgate.service import Outcome
from indexgate.store import initialize_store
from indexgate.schemas.records import DeadLetter


@click.group(cls=Tool)
@click.version_option(package_name="indexgate")
def main() -> None:
    """indexgate: branch locks and shadow-index switches driven by funnel CloudEvents."""
    load_settings()  # an unknown or bad INDEXGATE_* variable stops every command (Tool: exit 6)


@main.command()
@click.option("--loglevel", default="INFO", show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=None, help="Pool processes (default: CPU count).")
def up(loglevel: str, concurrency: int | None) -> None:
    """Run a worker with embedded beat in the foreground (embedded defaults: no servers)."""
    from indexgate.workers import app

    argv = ["worker", "-B", f"--loglevel={loglevel}"]
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    app.worker_main(argv)


@main.command()
@guarded
def setup() -> None:
    """Initialize the store and declare the funnel's topology on the broker (idempotent);
    run before the first worker and the first funnel event, and after upgrades."""
    from kombu.utils.url import maybe_sanitize_url

    from indexgate.events.brokers import transport_for

    settings = load_settings()
    url = initialize_store(settings)
    click.echo(f"store {maybe_sanitize_url(url)}: initialized")
    transport = transport_for(settings)
    try:
        for line in transport.declare():
            click.echo(f"broker {transport.safe_url}: {line}")
    finally:
        transport.close()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--port", type=PORT, default=8700, show_default=True)
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@guarded
def serve(host: str, port: int, log_level: str) -> None:
    """Run the HTTP API (GET /v1/check ...) on the configured store and broker. Exit 1 if
    it cannot listen there (address in use...), 6 if the settings cannot be used."""
    from indexgate.api.serve import run
    from indexgate.settings import sanitized_url

    settings = load_settings()
    banner = f"indexgate API on http://{host}:{port} (store {sanitized_url(settings.resolved_store_url)}, " \
             f"token {'required' if settings.api_token else 'not required'})"
    # once the address is ours; JSON logs say it as their first line instead
    run(settings, host, port, log_level,
        listening=(lambda: click.echo(banner, err=True)) if settings.log_format == "text" else None)


@main.command()
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Keep the demo's store and broker here (default: a temporary folder).")
def demo(data_dir: str | None) -> None:
    """Run the lock scenario end to end on the embedded broker and store; print a timeline."""
    from indexgate.demo import run_demo

    sys.exit(run_demo(data_dir))


@main.command()
@click.argument("branch", type=NAME)
@click.argument("resource_type", type=NAME)
@click.option("--action", type=NAME, default="write", show_default=True, help="read and draft are always allowed.")
@click.option("--json", "as_json", is_flag=True)
@guarded
def check(branch: str, resource_type: str, action: str, as_json: bool) -> None:
    """May ACTION on RESOURCE_TYPE of BRANCH proceed now? Exit 0 allowed, 3 denied, 4 unknown."""
    decision = service().check(branch, whole_branch(resource_type), action)
    if as_json:
        emit(decision.model_dump(mode="json"))  # the same fields as GET /v1/check
    else:
        click.echo(("ALLOWED: " if decision.allowed else "DENIED: ") + decision.message)
    if not decision.allowed:
        sys.exit(EXIT_DENIED)


@main.group()
def locks() -> None:
    """Inspect and act on locks."""


@locks.command("list")
@click.option("--branch", type=NAME, default=None)
@click.option("--json", "as_json", is_flag=True)
@guarded
def locks_list(branch: str | None, as_json: bool) -> None:
    """Every stored lock with its health (dead ones until a sweep removes them)."""
    views = service().list_locks(branch)
    if as_json:
        return emit([lock_json(v) for v in views])
    if not views:
        click.echo("no locks")
    for v in views:
        lock = v.lock
        click.echo(f"{lock.lock_id}  {lock.branch}:{lock.resource_type or '*'}  token={lock.fencing_token}  "
                   f"holder={lock.holder} job={lock.job_id}  {v.health}  expires={lock.expires_at:%Y-%m-%dT%H:%M:%SZ}"
                   + ("" if v.in_force else f"  DEAD ({v.death_reason})"))


@locks.command("show")
@click.argument("lock_id", type=NAME)
@click.option("--json", "as_json", is_flag=True)
@guarded
def locks_show(lock_id: str, as_json: bool) -> None:
    """One lock, every field."""
    payload = lock_json(service().show(lock_id))
    if as_json:
        return emit(payload)
    for key, value in payload.items():
        click.echo(f"{key:24} {value}")


@locks.command("health")
@click.argument("lock_id", type=NAME)
@click.option("--json", "as_json", is_flag=True)
@guarded
def locks_health(lock_id: str, as_json: bool) -> None:
    """Heartbeat health of one lock: healthy, warning or critical."""
    v = service().show(lock_id)
    payload = {"lock_id": lock_id, "health": str(v.health), "in_force": v.in_force,
               "death_reason": str(v.death_reason) if v.death_reason else None,
               "seconds_since_heartbeat": v.seconds_since_heartbeat,
               "heartbeat_deadline": v.heartbeat_deadline.isoformat(),
               "expires_at": v.lock.expires_at.isoformat(),
               "clock_skew_s": v.clock_skew_s, "clock_skew_beyond_bound": v.clock_skew_beyond_bound}
    if as_json:
        return emit(payload)
    beyond = " (beyond INDEXGATE_MAX_CLOCK_SKEW_S)" if v.clock_skew_beyond_bound else ""
    click.echo(f"{lock_id}: {v.health} ({v.seconds_since_heartbeat:.1f} s since last heartbeat; "
               f"deadline {payload['heartbeat_deadline']}; holder clock skew {v.clock_skew_s:+.1f} s{beyond})")


@locks.command("summary")
@click.option("--json", "as_json", is_flag=True)
@guarded
def locks_summary(as_json: bool) -> None:
    """Counts of locks by health."""
    counts = service().summary()
    if as_json:
        return emit(counts)
    click.echo("  ".join(f"{key}={value}" for key, value in counts.items()))


def _report(outcome: Outcome) -> None:
    click.echo(f"{outcome.status}: {outcome.detail}")


@locks.command("extend")
@click.argument("lock_id", type=NAME)
@click.option("--by-s", type=SECONDS, required=True, help="Seconds to add to the TTL.")
@click.option("--reason", type=TEXT, required=True, help="Why; kept in the audit trail.")
@click.option("--operator", type=NAME, default=None, help="Who (default: user@host).")
@guarded
def locks_extend(lock_id: str, by_s: float, reason: str, operator: str | None) -> None:
    """Extend a live lock's TTL (bounded by INDEXGATE_MAX_TTL_S after acquisition)."""
    _report(service().extend(lock_id, by_s, operator or operator_name(), reason))


@locks.command("release")
@click.argument("lock_id", type=NAME)
@click.option("--reason", type=TEXT, required=True, help="Why; kept in the audit trail.")
@click.option("--operator", type=NAME, default=None, help="Who (default: user@host).")
@guarded
def locks_release(lock_id: str, reason: str, operator: str | None) -> None:
    """Force-release a lock (reason FORCED)."""
    _report(service().force_release(lock_id, operator or operator_name(), reason))


@main.command()
@click.argument("event_type", type=NAME)
@click.option("--data", "data_json", required=True, help="The event's data as a JSON object.")
@click.option("--mode", type=click.Choice(["structured", "binary"]), default="structured", show_default=True)
@click.option("--source", type=NAME, default="indexgate-cli", show_default=True)
@click.option("--id", "event_id", type=NAME, default=None, help="Event id (default: random).")
@guarded
def publish(event_type: str, data_json: str, mode: str, source: str, event_id: str | None) -> None:
    """Publish a funnel CloudEvent where the intake reads it (what the funnel does). Exit 5
    if the broker cannot be reached."""
    from indexgate.events.publisher import Publisher, funnel_event

    try:
        data = json.loads(data_json)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--data") from exc
    if not isinstance(data, dict):
        raise click.BadParameter(f"must be a JSON object, got {type(data).__name__}", param_hint="--data")
    event = funnel_event(event_type, data, source=source, event_id=event_id)
    publisher = Publisher(load_settings())
    try:
        publisher.publish_funnel(event, mode=mode)  # type: ignore[arg-type]
    finally:
        publisher.close()
    click.echo(f"published {event_type} id={event.get_id()} ({mode})")


@main.group()
def deadletters() -> None:
    """Messages the worker could not use, kept with their reason."""


@deadletters.command("list")
@click.option("--limit", type=LIMIT, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@guarded
def deadletters_list(limit: int, as_json: bool) -> None:
    """Newest first; a body over 64 KiB is kept cut, with its full size and sha256."""
    letters = service().store.dead_letters(limit)
    if as_json:
        return emit([letter.model_dump(mode="json") for letter in letters])
    if not letters:
        click.echo("no dead letters")
    for letter in letters:
        click.echo(_letter_line(letter))


def _letter_line(letter: DeadLetter) -> str:
    """One line per letter; a cut body says so, with what identifies the whole one."""
    line = f"{letter.at:%Y-%m-%dT%H:%M:%SZ}  {letter.letter_id}  {letter.routing_key or '-'}  {letter.reason}"
    if letter.body_truncated:
        line += f"  [body truncated: {letter.body_bytes} bytes, sha256 {letter.body_sha256}]"
    if letter.replayed_at is not None:
        line += f"  [replayed {letter.replays}x, last {letter.replayed_at:%Y-%m-%dT%H:%M:%SZ} by {letter.replayed_by}]"
    return line


@deadletters.command("replay")
@click.argument("letter_ids", nargs=-1, type=NAME)
@click.option("--all", "every", is_flag=True, help="Every letter not replayed yet (oldest first).")
@click.option("--dry-run", is_flag=True, help="Send nothing: decode each letter and say what a worker would do.")
@click.option("--again", is_flag=True, help="Send letters that were replayed before too.")
@click.option("--operator", type=NAME, default=None, help="Who (default: user@host); kept on the letter.")
@click.option("--json", "as_json", is_flag=True)
@guarded
def deadletters_replay(letter_ids: tuple[str, ...], every: bool, dry_run: bool, again: bool, operator: str | None,
                       as_json: bool) -> None:
    """Send kept messages back through the intake (same decode, same inbox: an event applied
    meanwhile changes nothing). A letter whose body or headers were cut cannot be replayed.
    Exit 2 if any letter was refused or not found, 5 if the broker cannot be reached."""
    from indexgate.events.brokers import transport_for
    from indexgate.events.replay import REFUSED, replay

    if bool(letter_ids) == every:
        raise click.UsageError("give letter ids or --all (not both)")
    settings = load_settings()
    transport = transport_for(settings)
    try:
        results = replay(service().store, transport, settings, list(letter_ids) or None, operator or operator_name(),
                         dry_run=dry_run, again=again)
    finally:
        transport.close()
    if as_json:
        emit([{"letter_id": r.letter_id, "status": str(r.status), "detail": r.detail} for r in results])
    else:
        for r in results:
            click.echo(f"{r.letter_id}  {r.status}: {r.detail}")
        if not results:
            click.echo("no dead letters to replay")
    if any(r.status in REFUSED for r in results):
        sys.exit(EXIT_BAD_REQUEST)


@main.command()
@click.option("--branch", type=NAME, default=None)
@click.option("--limit", type=LIMIT, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@guarded
def audit(branch: str | None, limit: int, as_json: bool) -> None:
    """The audit trail: who did what to which lock, why and when (newest first)."""
    entries = service().store.audit(limit, branch)
    if as_json:
        return emit([entry.model_dump(mode="json") for entry in entries])
    for e in entries:
        click.echo(f"{e.at:%Y-%m-%dT%H:%M:%S}Z  {e.kind:14} {e.branch or '-'}:{e.resource_type or '*'}  "
                   f"job={e.job_id or '-'} token={e.fencing_token or '-'} by={e.actor}  {e.reason or ''}")


main.add_command(shadows)
main.add_command(index)
main.add_command(intake)
main.add_command(beat)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="indexgate")
