"""``indexgate deadletters replay``: kept messages go back through the intake of a real worker.

The CLI runs as a subprocess against the real Redis and a real worker; the letters are
written into the store as the intake keeps them (a valid event dead-lettered by an internal
error, a still-bad one, one whose body was cut). Replaying twice changes what once did; a
cut body is refused and sends nothing; the HTTP API's listing shows the marks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from indexgate.clock import utcnow
from indexgate.events.decode import RawMessage, event_key
from indexgate.events.intake import kept_body
from indexgate.events.publisher import encode, funnel_event
from indexgate.schemas.records import DeadLetter
from indexgate.service import Service
from indexgate.settings import Settings
from indexgate.testing.api import api_process
from indexgate.testing.broker_names import delete_run_names
from indexgate.testing.processes import PROJECT_ROOT, settings_env, start_worker, stop, wait_ready
from tests import ops_kit
from tests.conftest import REDIS_URL, isolated_settings, require_reachable

pytestmark = pytest.mark.slow


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "indexgate.cli", "deadletters", *args], env=settings_env(settings),
                          capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT)


def letter_of(event, reason: str, limit: int | None = None) -> DeadLetter:
    """A letter as ``events.intake.dead_letter`` keeps it."""
    message = encode(event)
    raw = RawMessage.build(message.headers, message.content_type, message.body, event.get_type())
    body = kept_body(raw) if limit is None else kept_body(raw, limit)
    return DeadLetter(at=utcnow(), reason=reason, routing_key=raw.routing_key, content_type=raw.content_type,
                      headers=raw.headers, **body)


@pytest.fixture
def live(tmp_path: Path):
    require_reachable(REDIS_URL)
    settings = isolated_settings(tmp_path, REDIS_URL)
    worker = start_worker(settings, "replay", concurrency=1)
    service = Service.from_settings(settings)
    try:
        wait_ready(settings, [worker])
        yield settings, service
    finally:
        stop(worker)
        service.store.close()
        delete_run_names(settings)


def state(service: Service, branch: str) -> tuple:
    """What a replay may change: the branch's locks, its audit trail, the dead letters."""
    locks = [(v.lock.job_id, v.lock.fencing_token) for v in service.list_locks(branch)]
    return locks, len(service.store.audit(-1, branch)), len(service.store.dead_letters(-1))


def test_replay_twice_changes_what_once_did(live) -> None:
    settings, service = live
    started = funnel_event("com.oms.indexing.started", {"job_id": "job-r1", "branch": "replay/main",
                                                        "resource_types": ["object_type"]}, source="funnel")
    letter = letter_of(started, "internal error: RuntimeError: a bug since fixed")
    service.store.add_dead_letter(letter)

    dry = cli(settings, "replay", letter.letter_id, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would_send: would be applied: com.oms.indexing.started" in dry.stdout
    assert service.list_locks("replay/main") == [] and service.store.dead_letter(letter.letter_id).replays == 0

    first = cli(settings, "replay", letter.letter_id, "--operator", "alice@ops")
    assert first.returncode == 0 and f"{letter.letter_id}  sent:" in first.stdout, first.stdout + first.stderr
    ops_kit.wait_for(lambda: service.store.seen(event_key("funnel", started.get_id())), what="the replayed start")
    once = state(service, "replay/main")
    assert once[0] == [("job-r1", 1)]

    skipped = cli(settings, "replay", letter.letter_id)
    assert skipped.returncode == 0 and "already_replayed" in skipped.stdout
    again = cli(settings, "replay", letter.letter_id, "--again", "--operator", "bob@ops")
    assert again.returncode == 0 and "sent" in again.stdout
    wait_quiet(settings)
    assert state(service, "replay/main") == once  # the inbox dropped the second delivery

    marked = service.store.dead_letter(letter.letter_id)
    assert marked.replays == 2 and marked.replayed_by == "bob@ops" and marked.replayed_at is not None
    with api_process(settings) as url:
        [listed] = [x for x in httpx.get(f"{url}/v1/deadletters").json() if x["letter_id"] == letter.letter_id]
    assert listed["replays"] == 2 and listed["replayed_by"] == "bob@ops" and listed["replayed_at"]
    listing = cli(settings, "list")
    assert "replayed 2x" in listing.stdout and "by bob@ops" in listing.stdout


def test_a_cut_body_is_refused_and_sends_nothing(live) -> None:
    settings, service = live
    big = funnel_event("com.oms.indexing.started", {"job_id": "job-big", "branch": "replay/big",
                                                    "resource_types": ["object_type"], "reason": "x" * 5000})
    cut = letter_of(big, "body is 5300 bytes, over the limit", limit=1024)
    assert cut.body_truncated
    service.store.add_dead_letter(cut)
    before = state(service, "replay/big")
    result = cli(settings, "replay", cut.letter_id)
    assert result.returncode == 2
    assert f"{cut.letter_id}  cut: cannot be replayed: its body was cut" in result.stdout
    wait_quiet(settings)
    assert state(service, "replay/big") == before and service.store.dead_letter(cut.letter_id).replays == 0
    assert cli(settings, "replay", "no-such-letter").returncode == 2


def test_replay_all_sends_each_unreplayed_letter_and_a_still_bad_one_is_dead_lettered_again(live) -> None:
    settings, service = live
    good = funnel_event("com.oms.indexing.started", {"job_id": "job-all", "branch": "replay/all",
                                                     "resource_types": ["object_type"]}, source="funnel")
    bad = funnel_event("com.oms.indexing.bogus", {"job_id": "job-all"}, source="funnel")
    letters = [letter_of(good, "internal error: fixed"), letter_of(bad, "unknown event type")]
    for letter in letters:
        service.store.add_dead_letter(letter)
    result = cli(settings, "replay", "--all", "--json")
    assert result.returncode == 0, result.stderr
    assert {(r["letter_id"], r["status"]) for r in json.loads(result.stdout)} >= {(x.letter_id, "sent") for x in letters}
    ops_kit.wait_for(lambda: len(service.store.dead_letters(-1)) == 3, what="the bad one dead-lettered again")
    ops_kit.wait_for(lambda: service.list_locks("replay/all") != [], what="the good one applied")
    newest = service.store.dead_letters(1)[0]
    assert "com.oms.indexing.bogus" in newest.reason and newest.replays == 0
    assert json.loads(cli(settings, "replay", "--all", "--json").stdout) == [
        {"letter_id": newest.letter_id, "status": "sent", "detail": newest_detail(newest)}]


def newest_detail(letter: DeadLetter) -> str:
    from indexgate.events.labels import label_of
    from indexgate.events.replay import raw_of

    return f"sent back through the intake ({label_of(raw_of(letter)).text()})"


def wait_quiet(settings: Settings) -> None:
    """Until the intake stream holds nothing (the replayed entries were applied and acked)."""
    import redis

    client = redis.Redis.from_url(settings.resolved_broker_url)
    try:
        ops_kit.wait_for(lambda: client.xlen(f"{settings.intake_queue}.stream") == 0
                         and client.llen(settings.task_queue) == 0, what="the intake to drain")
    finally:
        client.close()
