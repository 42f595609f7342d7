"""``indexgate intake status``: is the funnel's traffic flowing, and what waits where.

The broker's intake transport (``events.brokers``) reports its places: on Redis the intake
stream (events not yet applied), the group's pending entries per worker, how long the
oldest has waited, which workers ran their intake lately, and the kombu door (messages
kombu publishers left on the intake's list, and whether the exchange is bound at all); on
RabbitMQ and the embedded broker the intake queue's depth and consumers (on RabbitMQ
whether the funnel exchange exists, too). Everywhere the
task queue's depth, and ``alerts``: events piling up where no worker reads them, or a
topology that drops what is published (``indexgate setup`` declares it).
"""

from __future__ import annotations

from typing import Any

import click

from indexgate.cli_common import emit, guarded, load_settings
from indexgate.events.brokers import IntakeTransport, transport_for


@click.group()
def intake() -> None:
    """The funnel's events on their way in."""


@intake.command("status")
@click.option("--json", "as_json", is_flag=True)
@guarded
def intake_status(as_json: bool) -> None:
    """Events waiting, unacked and consumed; alerts when nobody reads them. Exit 5 if the
    broker cannot be reached."""
    transport = transport_for(load_settings())
    try:
        report = status_report(transport)
    finally:
        transport.close()
    if as_json:
        return emit(report)
    for line in status_lines(report):
        click.echo(line)


def status_report(transport: IntakeTransport) -> dict[str, Any]:
    depth = transport.queue_depth(transport.settings.task_queue)
    return {"broker": transport.safe_url, "task_queue": transport.settings.task_queue,
            "tasks_waiting": (depth or (0, 0))[0], **transport.status()}


def status_lines(report: dict[str, Any]) -> list[str]:
    lines = [f"broker {report['broker']}; task queue {report['task_queue']}: {report['tasks_waiting']} waiting"]
    if "stream" in report:
        s = report["stream"]
        lines.append(f"stream {s['stream']}: {s['length']} event(s) not yet applied, {s['pending']} handed off and "
                     f"unacked, {s['unread'] if s['unread'] is not None else '?'} unread; oldest unacked waited "
                     f"{s['oldest_pending_idle_s'] if s['oldest_pending_idle_s'] is not None else '-'} s; "
                     f"workers reading now: {', '.join(s['live_readers']) or 'none'}")
        lines += [f"  consumer {c['name']}: {c['pending']} unacked, last read {c['idle_ms'] / 1000:.1f} s ago"
                  for c in s["consumers"]]
    if "kombu" in report:
        k = report["kombu"]
        lines.append(f"kombu door: exchange {k['exchange']} -> list {k['list']}: "
                     f"{'bound' if k['bound'] else 'NOT bound'}, {k['waiting']} message(s) not yet moved")
    if "exchange" in report:
        e = report["exchange"]
        lines.append(f"exchange {e['name']}: {'declared' if e['declared'] else 'NOT declared'}")
    if "queue" in report:
        q = report["queue"]
        consumers = "consumers not reported by this broker" if q["consumers"] is None else f"{q['consumers']} consumer(s)"
        lines.append(f"queue {q['name']}: {q['waiting']} waiting, {consumers}"
                     + ("" if q["declared"] else " (not declared)"))
    lines += [f"WARNING: {a['message']}" for a in report["alerts"]]
    return lines
