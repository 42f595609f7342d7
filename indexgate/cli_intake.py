"""``indexgate intake status``: is the funnel's traffic flowing, and what waits where.

On Redis: the intake stream (events not yet applied), the group's pending entries per
worker and how long the oldest has waited - the first thing to look at when locks seem
stuck or edits stay blocked. On RabbitMQ and the embedded broker: the intake queue's
depth and consumers. Both: the task queue's depth (hand-off tasks and sweeps waiting).
"""

from __future__ import annotations

from typing import Any

import click

from indexgate.events import redis_stream
from indexgate.events.publisher import broker_connection, queue_depth
from indexgate.cli_common import emit, load_settings
from indexgate.settings import Settings


@click.group()
def intake() -> None:
    """The funnel's events on their way in."""


@intake.command("status")
@click.option("--json", "as_json", is_flag=True)
def intake_status(as_json: bool) -> None:
    """Events waiting, unacked and consumed, per broker."""
    settings = load_settings()
    try:
        report = _status(settings)
    except Exception as exc:  # the broker is the thing being diagnosed: say so, exit 1
        raise click.ClickException(f"broker {_safe_url(settings)} unreachable: {type(exc).__name__}: {exc}")
    if as_json:
        return emit(report)
    click.echo(f"broker {report['broker']}; task queue {settings.task_queue}: {report['tasks_waiting']} waiting")
    if "stream" in report:
        s = report["stream"]
        click.echo(f"stream {s['stream']}: {s['length']} event(s) not yet applied, {s['pending']} handed off and "
                   f"unacked, {s['unread'] if s['unread'] is not None else '?'} unread; oldest unacked waited "
                   f"{s['oldest_pending_idle_s'] if s['oldest_pending_idle_s'] is not None else '-'} s")
        for c in s["consumers"]:
            click.echo(f"  consumer {c['name']}: {c['pending']} unacked, last read {c['idle_ms'] / 1000:.1f} s ago")
    else:
        q = report["queue"]
        click.echo(f"queue {q['name']}: {q['waiting']} waiting, {q['consumers']} consumer(s)")


def _status(settings: Settings) -> dict[str, Any]:
    report: dict[str, Any] = {"broker": _safe_url(settings)}
    with broker_connection(settings) as conn:
        report["tasks_waiting"] = queue_depth(conn, settings.task_queue)[0]
        if redis_stream.uses_stream(settings):
            client = redis_stream.client(settings)
            try:
                report["stream"] = redis_stream.StreamGroup(client, settings, consumer="indexgate-cli").status()
            finally:
                client.close()
        else:
            waiting, consumers = queue_depth(conn, settings.intake_queue)
            report["queue"] = {"name": settings.intake_queue, "waiting": waiting, "consumers": consumers}
    return report


def _safe_url(settings: Settings) -> str:
    """The broker URL without its password."""
    from kombu.utils.url import maybe_sanitize_url

    return maybe_sanitize_url(settings.resolved_broker_url)
