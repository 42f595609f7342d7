"""Raw broker message -> ``IncomingEvent`` (``events.decode``) -> payload (``events.catalog``)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from indexgate.events import catalog
from indexgate.events.decode import STRUCTURED, IncomingEvent, RawMessage, decode, event_key
from indexgate.events.intake import ingest
from indexgate.events.publisher import encode, funnel_event
from indexgate.errors import MalformedEvent
from indexgate.service import Service
from indexgate.settings import Settings
from indexgate.store import initialize_store
from indexgate.schemas.payloads import CompletedData, HeartbeatData, StartedData

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "funnel-events"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "funnel-events"  # the origin of the copies
LIMIT = 1_048_576
T = datetime(2025, 6, 26, 10, 0, tzinfo=timezone.utc)
FILES = sorted(path.name for path in FIXTURES.glob("*.json"))


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def structured(obj, content_type: str | None = STRUCTURED, **kw) -> RawMessage:
    body = obj if isinstance(obj, (str, bytes)) else json.dumps(obj)
    return RawMessage.build(kw.pop("headers", {}), content_type, body, **kw)


def started() -> dict:
    return fixture("indexing-started-traditional.json")


def without(obj: dict, key: str) -> dict:
    return {k: v for k, v in obj.items() if k != key}


def heartbeat_event(**kw):
    return funnel_event("com.oms.indexing.heartbeat", {"job_id": "job-42", "progress_percent": 10},
                        source="funnel-service", event_id="hb-1", time=T, **kw)


def binary(event=None, rename=lambda name: name, drop: tuple[str, ...] = (), **overrides) -> RawMessage:
    message = encode(event or heartbeat_event(), "binary")
    headers = {rename(k): v for k, v in message.headers.items() if k not in drop}
    headers.update(overrides)
    return RawMessage.build(headers, message.content_type, message.body)


def malformed(raw: RawMessage, **kw) -> str:
    with pytest.raises(MalformedEvent) as info:
        decode(raw, kw.pop("max_bytes", LIMIT), **kw)
    return str(info.value)


# --- fixtures -------------------------------------------------------------------------


def test_the_in_repo_fixtures_are_the_four_shared_events():
    assert FILES == ["indexing-started-shadow.json", "indexing-started-traditional.json",
                     "seed-heartbeat-progress-info.json", "seed-shadow-indexing-completed.json"]
    if SHARED.is_dir():  # keep the copies honest where the shared folder exists
        for name in FILES:
            assert fixture(name) == json.loads((SHARED / name).read_text()), name


@pytest.mark.parametrize("name", FILES)
def test_structured_mode_decodes_each_fixture(name):
    obj = fixture(name)
    event = decode(structured(obj), LIMIT)
    assert (event.id, event.source, event.type) == (obj["id"], obj["source"], obj["type"])
    assert event.data == obj["data"] and event.subject == obj.get("subject")
    assert event.key == f"{obj['source']}|{obj['id']}"
    if "time" in obj:
        assert event.time == datetime.fromisoformat(obj["time"]) and event.time.tzinfo is not None
    else:
        assert event.time is None


def test_structured_event_sent_as_plain_json_is_recognised():
    event = decode(structured(started(), "application/json"), LIMIT)
    assert event.id == "start-1c9e" and event.data["job_id"] == "job-42"


def test_structured_time_absent_stays_none():
    event = decode(structured(without(started(), "time")), LIMIT)
    assert event.time is None


def test_structured_time_null_is_treated_as_absent():
    event = decode(structured(started() | {"time": None}), LIMIT)
    assert event.time is None


# --- the idempotency key --------------------------------------------------------------


@pytest.mark.parametrize(("source", "event_id", "key"), [
    ("funnel-service", "start-1c9e", "funnel-service|start-1c9e"),  # unchanged: stored inbox keys stay valid
    ("funnel", "a|b", "funnel|a|b"),  # the id is everything after the first bare '|'
    ("a|b", "c", "a\\|b|c"),
    ("a\\", "b", "a\\\\|b"),
])
def test_event_key_escapes_only_what_would_make_it_ambiguous(source, event_id, key):
    assert event_key(source, event_id) == key
    assert IncomingEvent(id=event_id, source=source, type="t", time=None, data={}).key == key


def test_event_key_never_collides_across_the_separator():
    pairs = [("a|b", "c"), ("a", "b|c"), ("a\\", "b|c"), ("a\\|b", "c"), ("a", "\\|b|c"), ("a|", "b"), ("a", "|b")]
    assert len({event_key(source, event_id) for source, event_id in pairs}) == len(pairs)


def test_events_whose_plain_keys_would_collide_are_both_applied(tmp_path):
    settings = Settings(data_dir=tmp_path, store_url=None, broker_url=None, source_allowlist=[])
    initialize_store(settings)
    service = Service.from_settings(settings)
    try:
        for source, event_id, job, branch in [("a|b", "c", "j1", "b1"), ("a", "b|c", "j2", "b2")]:
            obj = {"specversion": "1.0", "id": event_id, "source": source, "type": "com.oms.indexing.started",
                   "data": {"job_id": job, "branch": branch}}
            assert ingest(service, settings, structured(obj)).status == "applied", (source, event_id)
        assert {view.lock.job_id for view in service.list_locks()} == {"j1", "j2"}
    finally:
        service.store.close()


# --- binary mode ----------------------------------------------------------------------


def test_binary_mode_round_trip():
    raw = binary()
    assert raw.headers["ce-id"] == "hb-1" and raw.content_type == "application/json"
    event = decode(raw, LIMIT)
    assert (event.id, event.source, event.type) == ("hb-1", "funnel-service", "com.oms.indexing.heartbeat")
    assert event.time == T and event.data == {"job_id": "job-42", "progress_percent": 10}


def test_binary_subject_and_offset_time_are_kept_as_utc():
    raw = binary(heartbeat_event(subject="feature/x"), **{"ce-time": "2025-06-26T12:00:00+02:00"})
    event = decode(raw, LIMIT)
    assert event.subject == "feature/x" and event.time == T and event.time.utcoffset().total_seconds() == 0


@pytest.mark.parametrize("prefix", ["cloudEvents_", "cloudEvents:"])
def test_amqp10_header_prefixes_are_accepted(prefix):
    raw = binary(rename=lambda name: prefix + name[len("ce-"):])
    assert not any(name.startswith("ce-") for name in raw.headers)
    event = decode(raw, LIMIT)
    assert event.id == "hb-1" and event.time == T and event.type == "com.oms.indexing.heartbeat"


def test_binary_time_absent_stays_none():
    event = decode(binary(drop=("ce-time",)), LIMIT)
    assert event.time is None and event.id == "hb-1"


def test_headers_given_as_bytes_are_decoded():
    message = encode(heartbeat_event(), "binary")
    raw = RawMessage.build({k: v.encode() for k, v in message.headers.items()}, message.content_type, message.body)
    assert decode(raw, LIMIT).id == "hb-1"


# --- malformed ------------------------------------------------------------------------


def test_bad_json_body():
    assert "not JSON" in malformed(structured("{not json"))


def test_json_array_body():
    assert "must be a JSON object, got list" in malformed(structured("[1, 2]"))


@pytest.mark.parametrize("attribute", ["source", "type"])
def test_missing_required_attribute_structured(attribute):
    assert attribute in malformed(structured(without(started(), attribute)))


def test_missing_source_binary():
    assert "source" in malformed(binary(drop=("ce-source",)))


def test_missing_id_structured_is_malformed():
    assert "id" in malformed(structured(without(started(), "id")))


def test_missing_id_binary_is_malformed():
    assert "id" in malformed(binary(drop=("ce-id",)))


def test_missing_specversion_is_malformed():
    assert "specversion" in malformed(structured(without(started(), "specversion")))


def test_empty_id_is_malformed():
    assert "id" in malformed(structured(started() | {"id": ""}))


@pytest.mark.parametrize("value", ["yesterday", "2025-13-45T00:00:00Z"])
def test_bad_time_string_is_malformed(value):
    assert "attribute 'time'" in malformed(structured(started() | {"time": value}))
    assert "attribute 'time'" in malformed(binary(**{"ce-time": value}))


def test_naive_time_is_malformed():
    assert "time" in malformed(binary(**{"ce-time": "2025-06-26T10:00:00"}))


def test_bad_time_message_names_the_attribute():
    assert "time" in malformed(structured(started() | {"time": "yesterday"}))


def test_wrong_specversion():
    assert "specversion" in malformed(structured(started() | {"specversion": "0.3"}))
    assert "specversion" in malformed(binary(**{"ce-specversion": "0.3"}))


def test_body_over_max_bytes():
    raw = structured(started())
    size = len(raw.body_bytes())
    assert decode(raw, size).id == "start-1c9e"  # exactly at the limit is fine
    message = malformed(raw, max_bytes=size - 1)
    assert f"{size} bytes" in message and "INDEXGATE_MAX_EVENT_BYTES" in message


@pytest.mark.parametrize("data", [[1, 2], "text", 5])
def test_non_object_data(data):
    assert "data must be a JSON object" in malformed(structured(started() | {"data": data}))


def test_non_object_data_binary():
    message = encode(heartbeat_event(), "binary")
    assert "data must be a JSON object, got list" in malformed(
        RawMessage.build(message.headers, message.content_type, b"[1]"))


@pytest.mark.parametrize("content_type", [None, "text/plain"])
def test_no_content_type_and_no_ce_headers(content_type):
    message = malformed(structured(started(), content_type))
    assert "not a CloudEvent" in message and "no ce- headers" in message


def test_source_not_in_allowlist():
    raw = structured(started())
    assert decode(raw, LIMIT, ["funnel-service"]).source == "funnel-service"
    message = malformed(raw, source_allowlist=["other-funnel"])
    assert "'funnel-service'" in message and "INDEXGATE_SOURCE_ALLOWLIST" in message


def test_non_utf8_body_round_trips_as_base64():
    body = b'{"specversion": "1.0", "id": "\xff\xfe"}'
    raw = RawMessage.build({"x-trace": b"\xffab"}, STRUCTURED, body, routing_key="com.oms.indexing.started")
    assert raw.body_encoding == "base64" and raw.body_bytes() == body
    assert RawMessage.model_validate_json(raw.model_dump_json()).body_bytes() == body  # survives a task hop
    assert raw.headers["x-trace"].endswith("ab")
    assert "not JSON" in malformed(raw)


def test_text_body_stays_text():
    raw = RawMessage.build({}, STRUCTURED, "{\"a\": \"é\"}".encode())
    assert raw.body_encoding == "utf-8" and raw.body == "{\"a\": \"é\"}"


# --- catalog.validate -----------------------------------------------------------------


def incoming(type_: str, data: dict) -> IncomingEvent:
    return IncomingEvent(id="e-1", source="funnel-service", type=type_, time=T, data=data)


def validate_fixture(name: str):
    return catalog.validate(decode(structured(fixture(name)), LIMIT))


def test_fixture_payloads_validate_to_their_models():
    route, data = validate_fixture("indexing-started-traditional.json")
    assert isinstance(data, StartedData) and data.branch == "feature/user-schema"
    assert data.resource_types == ["object_type"] and data.ttl_s == 14400 and data.heartbeat_interval_s == 120
    _, shadow = validate_fixture("indexing-started-shadow.json")
    assert shadow.indexing_mode == "shadow" and shadow.model_extra["build_config"]["parallel_workers"] == 4


def test_seed_aliases_map_to_canonical_fields():
    _, hb = validate_fixture("seed-heartbeat-progress-info.json")
    assert isinstance(hb, HeartbeatData) and hb.progress_percent == 75 and hb.job_id == "job-42"
    _, done = validate_fixture("seed-shadow-indexing-completed.json")
    assert isinstance(done, CompletedData)
    assert (done.branch, done.shadow_index_id, done.record_count) == ("feature/user-schema", "shadow-abc-123", 10000)
    assert done.job_id is None and done.index_size_bytes == 52428800
    _, started_ = catalog.validate(incoming("com.oms.indexing.started", {"job_id": "j", "branch_name": "b"}))
    assert started_.branch == "b" and started_.resource_types == []
    _, progress = catalog.validate(incoming("com.oms.indexing.progress", {
        "job_id": "j", "records_indexed": 5, "progress_info": {"indexing_progress": 30, "estimated_remaining_s": 60}}))
    assert (progress.record_count, progress.progress_percent, progress.estimated_remaining_s) == (5, 30, 60)


def test_unknown_type_lists_the_known_types():
    with pytest.raises(MalformedEvent) as info:
        catalog.validate(incoming("com.oms.indexing.exploded", {}))
    message = str(info.value)
    assert "com.oms.indexing.exploded" in message
    assert all(known in message for known in catalog.ROUTES)


@pytest.mark.parametrize(("type_", "data", "field"), [
    ("com.oms.indexing.started", {"job_id": "j", "branch": "b", "resource_types": "object_type"}, "resource_types"),
    ("com.oms.indexing.started", {"job_id": "j", "branch": "b", "resource_types": [""]}, "resource_types"),
    ("com.oms.indexing.started", {"job_id": "j", "branch": "b", "indexing_mode": "fast"}, "indexing_mode"),
    ("com.oms.indexing.started", {"job_id": "j"}, "branch"),
    ("com.oms.indexing.started", {"job_id": "j", "branch": "b", "heartbeat_interval_s": 0}, "heartbeat_interval_s"),
    ("com.oms.indexing.heartbeat", {"job_id": "j", "progress_percent": 150}, "progress_percent"),
    ("com.oms.indexing.heartbeat", {"job_id": "j", "progress_info": {"indexing_progress": 150}},
     "progress_info.indexing_progress"),
    ("com.oms.indexing.heartbeat", {"job_id": "j", "estimated_remaining_s": -1}, "estimated_remaining_s"),
    ("com.oms.indexing.heartbeat", {}, "job_id"),
    ("com.oms.indexing.completed", {"branch": "b"}, "job_id"),
    ("com.oms.indexing.completed", {"job_id": "j", "records_indexed": "many"}, "records_indexed"),
])
def test_invalid_payloads_name_the_field(type_, data, field):
    with pytest.raises(MalformedEvent) as info:
        catalog.validate(incoming(type_, data))
    message = str(info.value)
    assert message.startswith(f"{type_} data is invalid") and field in message


# --- header values as real clients send them (py-amqp, pika, kombu's envelope) -----------


def test_an_amqp_timestamp_time_header_means_utc():
    """py-amqp decodes an AMQP ``timestamp`` as a naive datetime, UTC by the AMQP spec."""
    event = decode(binary(**{"ce-time": datetime(2025, 6, 26, 10, 0, 5)}), LIMIT)
    assert event.time == datetime(2025, 6, 26, 10, 0, 5, tzinfo=timezone.utc)


def test_an_aware_datetime_time_header_is_kept_as_utc():
    from datetime import timedelta

    offset = timezone(timedelta(hours=2))
    event = decode(binary(**{"ce-time": datetime(2025, 6, 26, 12, 0, tzinfo=offset)}), LIMIT)
    assert event.time == T


def test_integer_boolean_bytes_and_table_headers_become_cloudevents_strings():
    raw = binary(**{"ce-attempt": 3, "ce-retried": True, "ce-draft": False, "ce-tenant": b"acme",
                    "x-trace": {"hops": [1, b"two", datetime(2025, 1, 1)]}, "x-void": None})
    assert {k: raw.headers[k] for k in ("ce-attempt", "ce-retried", "ce-draft", "ce-tenant")} == {
        "ce-attempt": "3", "ce-retried": "true", "ce-draft": "false", "ce-tenant": "acme"}
    assert json.loads(raw.headers["x-trace"]) == {"hops": [1, "two", "2025-01-01T00:00:00Z"]}
    assert "x-void" not in raw.headers  # an AMQP void header is absent
    assert decode(raw, LIMIT).id == "hb-1"


def test_a_naive_time_string_is_still_malformed():
    """Only a typed timestamp means UTC; RFC 3339 text must carry its offset."""
    assert "time" in malformed(binary(**{"ce-time": "2025-06-26T10:00:05"}))


@pytest.mark.parametrize("content_type", ["application/json", "application/vnd.oms+json; charset=utf-8", None])
def test_binary_data_that_is_not_json_names_that_fault(content_type):
    message = encode(heartbeat_event(), "binary")
    raw = RawMessage.build(message.headers, content_type, b'{"job_id": "job-42", ')
    reason = malformed(raw)
    assert reason.startswith("data is not valid JSON") and "must be a JSON object" not in reason


def test_binary_data_of_another_media_type_is_judged_as_not_an_object():
    message = encode(heartbeat_event(), "binary")
    assert "data must be a JSON object, got str" in malformed(RawMessage.build(message.headers, "text/plain", b"hi"))


def test_a_transport_fault_is_the_dead_letter_reason():
    raw = RawMessage.build({}, None, b"junk", fault="not a kombu message: the list entry is not JSON (x)")
    assert malformed(raw) == "not a kombu message: the list entry is not JSON (x)"


def test_too_many_headers_names_the_limit_and_its_setting():
    raw = binary(**{f"x-{n}": "v" for n in range(10)})
    count = len(raw.headers)
    assert decode(raw, LIMIT, max_headers=count).id == "hb-1"  # exactly at the limit is fine
    assert malformed(raw, max_headers=count - 1) == (
        f"message has {count} headers, over the limit of {count - 1} (INDEXGATE_MAX_HEADERS)")


def test_a_header_too_large_names_the_limit_and_its_setting():
    raw = binary(**{"x-big": "v" * 100})
    assert decode(raw, LIMIT, max_header_bytes=105).id == "hb-1"  # name (5) + value (100)
    reason = malformed(raw, max_header_bytes=104)
    assert reason == "header 'x-big' is 105 bytes (name + value), over the 104-byte limit (INDEXGATE_MAX_HEADER_BYTES)"


def test_a_dead_letter_keeps_bounded_headers(tmp_path):
    settings = Settings(data_dir=tmp_path, max_headers=5, max_header_bytes=64)
    initialize_store(settings)
    service = Service.from_settings(settings)
    raw = binary(**{f"x-{n:02}": "w" * (200 if n == 0 else 1) for n in range(20)})
    outcome = ingest(service, settings, raw)
    [letter] = service.store.dead_letters()
    assert outcome.status == "dead_lettered" and "INDEXGATE_MAX_HEADERS" in letter.reason
    assert len(letter.headers) == 6 and letter.headers["x-indexgate-headers-dropped"] == str(len(raw.headers) - 5)
    big = Settings(data_dir=tmp_path, max_header_bytes=64)
    ingest(service, big, binary(**{"x-big": "w" * 200}))
    kept = service.store.dead_letters()[0]
    assert "INDEXGATE_MAX_HEADER_BYTES" in kept.reason and kept.headers["x-big"].endswith("...[cut: 200 bytes]")
    service.store.close()
