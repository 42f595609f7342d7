"""``GET /``: the locks board, a read-only HTML page for people (what Flower cannot show).

Server-rendered, no script and no build step: live locks by branch (holder, job, health
colour, progress, ETA, deadlines), shadow builds and active pointers, recent dead letters
and the intake backlog, reloaded by the browser every ``REFRESH_S`` seconds. Every value is
escaped (branch names, holders and dead-letter reasons are user input). With
``INDEXGATE_API_TOKEN`` set the page wants it like every endpoint: as a bearer token, or as
the password of HTTP basic auth (any user name), which a browser asks for by itself.
"""

from __future__ import annotations

import base64
import binascii
from secrets import compare_digest
from datetime import datetime
from html import escape
from typing import Iterable

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from indexgate.api.context import authorized, context
from indexgate.api.overview import Overview
from indexgate.locks import LockView

router = APIRouter()
REFRESH_S = 5

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .2em} h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;width:100%} th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;font-size:.9em}
th{background:#f3f3f3} .muted{color:#777} .down{color:#b00020;font-weight:bold}
.health{display:inline-block;padding:.1em .6em;border-radius:.8em;color:#fff;font-weight:bold}
.health-healthy{background:#2e7d32} .health-warning{background:#f9a825;color:#222} .health-critical{background:#c62828}
.dead td{color:#888}
"""


@router.get("/", include_in_schema=False, response_class=HTMLResponse)
async def board(request: Request) -> HTMLResponse:
    ctx = context(request)
    header = request.headers.get("authorization")
    if not (authorized(ctx, header.encode("latin-1") if header else None) or _basic_ok(ctx.token, header)):
        return HTMLResponse("<!doctype html><title>indexgate</title><p>This board needs the API token "
                            "(INDEXGATE_API_TOKEN) as the password.</p>", status_code=401,
                            headers={"WWW-Authenticate": 'Basic realm="indexgate"'})
    view = await request.app.state.watch.overview(ctx.service, ctx.calls)
    return HTMLResponse(render(view), headers={"Cache-Control": "no-store"})


def _basic_ok(token: bytes | None, header: str | None) -> bool:
    if token is None or not header or not header.lower().startswith("basic "):
        return False
    try:
        _user, _, password = base64.b64decode(header[6:].strip()).partition(b":")
    except (binascii.Error, ValueError):
        return False
    return compare_digest(password, token)


def render(view: Overview) -> str:
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><meta http-equiv=refresh content={REFRESH_S}>",
             "<meta name=viewport content='width=device-width'><title>indexgate locks board</title>",
             f"<style>{STYLE}</style></head><body>",
             f"<h1>indexgate locks board</h1><p class=muted>as of {_time(view.at)} (UTC); reloads every "
             f"{REFRESH_S} s</p>"]
    parts += _intake(view)
    if view.store is None:
        parts.append(f"<h2>Locks</h2><p class=down id=store-down>store unreachable: {escape(view.store_error or '')}"
                     "</p>")
    else:
        parts += _beat(view)
        parts += _locks(view.store.locks, view.at)
        parts += _builds(view)
        parts += _pointers(view)
        parts += _letters(view)
    parts.append("</body></html>")
    return "".join(parts)


def _intake(view: Overview) -> list[str]:
    if view.backlog is None:
        return [f"<h2>Intake</h2><p class=down id=broker-down>broker unreachable: "
                f"{escape(view.broker_error or '')}</p>"]
    b = view.backlog
    facts = [f"<b id=backlog>{b.waiting}</b> event(s) waiting"]
    if b.unacked is not None:
        facts.append(f"{b.unacked} handed off, unacked")
    if b.oldest_age_s is not None:
        facts.append(f"oldest waited {b.oldest_age_s:.1f} s")
    warnings = "".join(f"<li class=down>{escape(a['message'])}</li>" for a in b.alerts)
    return [f"<h2>Intake</h2><p>{'; '.join(facts)}</p>" + (f"<ul>{warnings}</ul>" if warnings else "")]


def _beat(view: Overview) -> list[str]:
    """Who sends the sweeps: the beat lease's holder (``indexgate.leases``)."""
    assert view.store is not None
    lease = view.store.beat_lease
    if lease is None or not lease.alive(view.at):
        last = f" (last: {escape(lease.holder)}, token {lease.token}, until {_time(lease.expires_at)})" if lease else ""
        return [f"<h2>Beat</h2><p class=down id=beat>beat: no beat holds the lease, no sweeps are sent{last}</p>"]
    return [f"<h2>Beat</h2><p id=beat>beat: {escape(lease.holder)} sends the sweeps (lease token {lease.token}, renewed "
            f"{_time(lease.renewed_at)})</p>"]


def _table(id_: str, heads: Iterable[str], rows: list[str], empty: str) -> str:
    if not rows:
        return f"<p class=muted id={id_}>{empty}</p>"
    head = "".join(f"<th>{h}</th>" for h in heads)
    return f"<table id={id_}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _locks(locks: list[LockView], now: datetime) -> list[str]:
    rows = []
    for v in sorted(locks, key=lambda v: (v.lock.branch, v.lock.resource_type or "")):
        lock = v.lock
        eta = "-"
        if lock.estimated_remaining_s is not None:
            eta_at = lock.last_heartbeat.timestamp() + lock.estimated_remaining_s
            eta = f"{_time(datetime.fromtimestamp(eta_at, now.tzinfo))} ({lock.estimated_remaining_s:.0f} s)"
        progress = "-" if lock.progress_percent is None else f"{lock.progress_percent:.0f} %"
        state = "" if v.in_force else f" <span class=muted>dead: {escape(str(v.death_reason))}</span>"
        rows.append(
            f"<tr class='lock{'' if v.in_force else ' dead'}' data-lock-id='{escape(lock.lock_id)}'>"
            f"<td class=branch>{escape(lock.branch)}</td><td>{escape(lock.resource_type or '* (whole branch)')}</td>"
            f"<td>{escape(str(lock.kind))}</td><td class=holder>{escape(lock.holder)}</td>"
            f"<td>{escape(lock.job_id)}</td>"
            f"<td><span class='health health-{escape(str(v.health))}'>{escape(str(v.health))}</span>{state}</td>"
            f"<td>{progress}</td><td>{eta}</td><td>{_time(v.heartbeat_deadline)}</td><td>{_time(lock.expires_at)}</td>"
            f"<td>{lock.fencing_token}</td></tr>")
    heads = ["branch", "resource type", "kind", "holder", "job", "health", "progress", "ETA",
             "heartbeat deadline", "expires (TTL)", "token"]
    return [f"<h2>Locks ({len(locks)})</h2>", _table("locks", heads, rows, "no locks")]


def _builds(view: Overview) -> list[str]:
    assert view.store is not None
    rows = [f"<tr><td>{escape(b.branch)}</td><td>{escape(b.index_type)}</td><td>{escape(b.shadow_index_id)}</td>"
            f"<td>{escape(b.job_id)}</td><td>{escape(b.holder)}</td><td class='state state-{escape(str(state))}'>"
            f"{escape(str(state))}</td><td>{b.build_progress_percent:.0f} %</td></tr>"
            for b, state in sorted(view.store.builds, key=lambda bs: (bs[0].branch, bs[0].index_type, bs[0].created_at))]
    heads = ["branch", "index type", "shadow index", "job", "holder", "state", "progress"]
    return [f"<h2>Shadow builds ({len(rows)})</h2>", _table("builds", heads, rows, "no shadow builds")]


def _pointers(view: Overview) -> list[str]:
    assert view.store is not None
    rows = []
    for index in sorted(view.store.indexes, key=lambda i: (i.branch, i.index_type)):
        p = index.active
        if p is None:
            continue
        verified = "-" if p.verification is None else escape(str(p.verification.outcome))
        rows.append(f"<tr><td>{escape(index.branch)}</td><td>{escape(index.index_type)}</td>"
                    f"<td>{escape(p.shadow_index_id)}</td><td>{escape(p.location or '-')}</td>"
                    f"<td>{_time(p.switched_at)}</td><td>{verified}</td></tr>")
    heads = ["branch", "index type", "active index", "location", "switched at", "verification"]
    return [f"<h2>Active indexes ({len(rows)})</h2>", _table("pointers", heads, rows, "no active index pointers")]


def _letters(view: Overview) -> list[str]:
    assert view.store is not None
    rows = []
    for letter in view.store.dead_letters:
        replayed = "-"
        if letter.replayed_at is not None:
            replayed = f"{_time(letter.replayed_at)} by {escape(letter.replayed_by or '?')}"
        cut = " (body cut)" if letter.body_truncated else ""
        rows.append(f"<tr><td>{_time(letter.at)}</td><td>{escape(letter.letter_id)}</td>"
                    f"<td>{escape(letter.routing_key or '-')}</td><td>{escape(letter.reason[:300])}{cut}</td>"
                    f"<td>{replayed}</td></tr>")
    heads = ["at", "letter", "routing key", "reason", "replayed"]
    return [f"<h2>Recent dead letters ({len(rows)})</h2>", _table("letters", heads, rows, "no dead letters")]


def _time(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S")
