"""What the hand-off path tells of a message cheaply (``events.labels``) and how a batch is
split into one task per event kind (``workers.intake.by_kind``). Pure: no broker."""

from __future__ import annotations

import ast
import json

from indexgate.events.decode import RawMessage
from indexgate.events.intake import Delivery
from indexgate.events.labels import REPR_MAX_CHARS, TASK_NAMES, Label, batch_repr, label_of
from indexgate.events.publisher import encode, funnel_event
from indexgate.workers.intake import by_kind


def raw(event, mode: str = "structured", routing_key: str | None = None) -> RawMessage:
    message = encode(event, mode)  # type: ignore[arg-type]
    return RawMessage.build(message.headers, message.content_type, message.body, routing_key)


HB = funnel_event("com.oms.indexing.heartbeat", {"job_id": "j1", "progress_percent": 5}, event_id="e1")
START = funnel_event("com.oms.indexing.started", {"job_id": "j2", "branch": "main", "resource_types": []},
                     event_id="e2")


def test_structured_and_binary_messages_are_told_by_their_own_type() -> None:
    assert label_of(raw(HB)) == Label("indexing.heartbeat", "com.oms.indexing.heartbeat", "e1", None, "j1")
    assert label_of(raw(START, "binary")) == Label("indexing.started", "com.oms.indexing.started", "e2", "main", "j2")
    # the routing key is only a hint: the message's own type wins
    assert label_of(raw(HB, routing_key="com.oms.indexing.completed")).kind == "indexing.heartbeat"


def test_amqp_10_headers_routing_key_fallback_and_unknown_kinds() -> None:
    amqp10 = RawMessage.build({"cloudEvents:type": "com.oms.indexing.failed", "cloudEvents:id": "x"}, "application/json",
                              json.dumps({"job_id": "j3"}))
    assert (label_of(amqp10).kind, label_of(amqp10).event_id, label_of(amqp10).job_id) == ("indexing.failed", "x", "j3")
    bare = RawMessage.build({}, "text/plain", "not json", "com.oms.shadow.switch.requested")
    assert label_of(bare).kind == "shadow.switch" and label_of(bare).task_name == "indexgate.shadow.switch"
    for message in (RawMessage.build({}, None, "garbage"), raw(funnel_event("com.oms.other", {}))):
        assert label_of(message).kind == "unknown" and label_of(message).task_name == "indexgate.unknown"
    assert label_of(RawMessage.build({}, None, b"\xff\xfe")).kind == "unknown"  # base64 body: not parsed
    assert "indexgate.unknown" in TASK_NAMES and "indexgate.indexing.heartbeat" in TASK_NAMES


def test_a_batch_goes_out_as_one_task_per_kind_in_order_within_each() -> None:
    events = [funnel_event("com.oms.indexing.heartbeat", {"job_id": "j1"}, event_id=f"h{i}") for i in range(3)]
    items = [Delivery(raw=raw(events[0]), ref="1-0"), Delivery(raw=raw(START), ref="2-0"),
             Delivery(raw=raw(events[1]), ref="3-0"), Delivery(raw=RawMessage.build({}, None, "junk"), ref="4-0"),
             Delivery(raw=raw(events[2]), ref="5-0")]
    groups = by_kind(items)
    assert [(name, [d.ref for d in delivered]) for name, delivered, _ in groups] == [
        ("indexgate.indexing.heartbeat", ["1-0", "3-0", "5-0"]), ("indexgate.indexing.started", ["2-0"]),
        ("indexgate.unknown", ["4-0"])]
    assert [label.event_id for label in groups[0][2]] == ["h0", "h1", "h2"]


def test_argsrepr_names_each_event_and_is_cut_with_a_count() -> None:
    labels = [Label("indexing.heartbeat", "com.oms.indexing.heartbeat", f"evt-{i:04d}", "main", "job-7")
              for i in range(500)]
    args, kwargs = batch_repr(labels)
    assert args.startswith("[indexing.heartbeat branch=main job=job-7 id=evt-0000; ")
    assert len(args) <= REPR_MAX_CHARS + 40 and args.endswith("more)]") and "(+" in args
    assert ast.literal_eval(kwargs) == {"events": 500, "branch": "main", "job_id": "job-7", "type": "com.oms.indexing.heartbeat"}
    mixed = batch_repr([Label("unknown", None, None, None, None), labels[0]])
    assert mixed[0] == "[unknown type=-; indexing.heartbeat branch=main job=job-7 id=evt-0000]"
