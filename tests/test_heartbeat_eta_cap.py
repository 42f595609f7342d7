"""A heartbeat's ETA beyond ``MAX_SECONDS`` is capped there, so the heartbeat still counts.

Refusing the whole heartbeat for a silly estimate used to let a live job's lock die at its
heartbeat deadline. NaN, infinity and negative ETAs are still invalid, and the durations
that configure a lock (``ttl_s``, ``heartbeat_interval_s`` of ``started``) stay strict.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from indexgate.events.decode import STRUCTURED, RawMessage
from indexgate.events.intake import ingest
from indexgate.service import Service
from indexgate.settings import Settings
from indexgate.store import initialize_store
from indexgate.schemas.payloads import MAX_SECONDS, HeartbeatData, StartedData
from tests.test_locks import POLICY
from tests.test_service import BRANCH, HEARTBEAT, STARTED, T0

BEYOND = [MAX_SECONDS + 1, 1e9, 1e12, 1e300, "1e12", pytest.param(10**400, id="10**400")]


def eta_of(data: dict) -> float | None:
    return HeartbeatData.model_validate({"job_id": "j", **data}).estimated_remaining_s


@pytest.mark.parametrize("eta", BEYOND)
def test_an_eta_beyond_the_bound_is_read_as_the_bound(eta):
    assert eta_of({"estimated_remaining_s": eta}) == float(MAX_SECONDS)
    assert eta_of({"progress_info": {"estimated_remaining_s": eta}}) == float(MAX_SECONDS)


@pytest.mark.parametrize("eta", [0, 12.5, MAX_SECONDS])
def test_an_eta_within_the_bound_is_kept(eta):
    assert eta_of({"estimated_remaining_s": eta}) == eta


@pytest.mark.parametrize("eta", [float("inf"), float("-inf"), float("nan"), "Infinity", -1, -1e300,
                                 pytest.param(-(10**400), id="-10**400"), "x"])
def test_a_non_finite_negative_or_non_numeric_eta_is_still_invalid(eta):
    with pytest.raises(ValidationError, match="estimated_remaining_s"):
        eta_of({"estimated_remaining_s": eta})


@pytest.mark.parametrize("field", ["ttl_s", "heartbeat_interval_s"])
def test_the_durations_of_started_are_not_capped(field):
    with pytest.raises(ValidationError, match=field):
        StartedData.model_validate({"job_id": "j", "branch": "b", field: 1e12})


# --- through the intake ---------------------------------------------------------------




@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path, store_url=None, broker_url=None, source_allowlist=[])
    initialize_store(settings)
    return settings


def send(service: Service, settings: Settings, type_: str, data: dict, event_id: str) -> str:
    body = json.dumps({"specversion": "1.0", "id": event_id, "source": "funnel", "type": type_, "data": data})
    return ingest(service, settings, RawMessage.build({}, STRUCTURED, body)).status


def test_a_heartbeat_with_a_huge_eta_keeps_the_lock_alive(service, settings, clock):
    assert send(service, settings, STARTED, {"job_id": "j", "branch": BRANCH, "resource_types": ["t"]}, "s") == "applied"
    clock.advance(150)  # the heartbeat deadline is 180 s: the heartbeat must count
    assert send(service, settings, HEARTBEAT, {"job_id": "j", "estimated_remaining_s": 1e12}, "hb") == "applied"
    (view,) = service.list_locks()
    assert view.lock.last_heartbeat == clock.now and view.lock.estimated_remaining_s == MAX_SECONDS
    assert view.lock.expires_at == T0 + timedelta(seconds=POLICY.max_ttl_s)  # extended, capped by max_ttl_s
    clock.advance(150)  # 300 s: past the first deadline, inside the refreshed one
    assert not service.check(BRANCH, "t").allowed
    assert service.store.dead_letters() == []


def test_a_heartbeat_with_an_infinite_eta_is_still_dead_lettered(service, settings):
    send(service, settings, STARTED, {"job_id": "j", "branch": BRANCH, "resource_types": ["t"]}, "s")
    assert send(service, settings, HEARTBEAT, {"job_id": "j", "estimated_remaining_s": float("inf")}, "hb") == (
        "dead_lettered")
    (letter,) = service.store.dead_letters()
    assert "estimated_remaining_s" in letter.reason
