"""Hostile funnel messages, generated with Hypothesis strategies.

``generate(n, seed, ...)`` runs a Hypothesis ``@given(st.data())`` function (seeded,
generate phase only, no example database, no shrinking) whose body draws one message after
another: a category, and per category the nasty values Hypothesis is good at (unicode
text, NaN / infinities / huge floats, big integers, arbitrary bytes). Cheap repeated choices
(which branch, which job) come from a ``random.Random`` that Hypothesis itself draws
(``st.randoms``), so the whole stream is reproducible from the seed and fast (about 10,000
messages in a few seconds).

Each message carries a unique token ``chaos-<run>-<n>``: the CloudEvent id when the
message has a usable one, and otherwise (no id, an id of the wrong type, not JSON at all)
inside the raw body, or in an ``x-chaos-token`` header as a last resort, so it can be found
again in the dead letter that keeps the raw message. The generator also says what should
happen to each message (``apply`` or ``dead`` with a hint of the reason), which the
scenario checks.

Valid job events keep a realistic order per job (started, then heartbeats, then one end),
with out-of-order ``time`` attributes, short TTLs and heartbeat intervals (locks die and
are taken over during the run), overlapping resource types on a few branches, the design
documents' alias field names, both content modes and the AMQP 1.0 header prefix.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from bench.chaos.common import Ledger, Published
from indexgate.events.catalog import ROUTES
from indexgate.events.decode import event_key

ALLOWED = ["funnel-a", "funnel-b"]
BRANCHES = ["main", "dev", "feature/ünïcode-🚀", "release/2024.1", "b" * 512, "hot fix"]
RESOURCE_TYPES = ["object_type", "link_type", "action_type", "interface_type"]
STRUCTURED = "application/cloudevents+json"
KNOWN = sorted(ROUTES)


@dataclass
class Msg:
    headers: dict[str, str]
    content_type: str | None
    body: bytes
    routing_key: str
    token: str
    category: str
    expect: str  # "apply": seen by the store; "dead": dead-lettered; "either"
    hint: str | None = None  # a substring the dead-letter reason should contain
    job: str | None = None
    type: str | None = None
    key: str | None = None  # source|id when the message has a usable id
    wave: int = 0  # broker sample: 0 = starts and noise, 1 = heartbeats, 2 = ends
    duplicate: bool = False  # an exact re-send of an earlier message (same token)
    extras: dict = field(default_factory=dict)


class _Gen:
    BASE = datetime.now(timezone.utc)

    def __init__(self, ledger: Ledger, max_bytes: int, first_job: int = 0) -> None:
        self.ledger = ledger
        self.max_bytes = max_bytes
        self.open: dict[str, dict] = {}  # job -> {"shadow": bool}
        self.sendable: list[Msg] = []  # earlier valid messages of this burst, for duplicates
        self.jobs = first_job
        self.base = self.BASE
        self.out: list[Msg] = []

    # --- envelopes ---------------------------------------------------------------------

    def _time(self, r: random.Random) -> str | None:
        roll = r.random()
        if roll < 0.15:
            return None
        offset = r.uniform(-7200, 7200) if roll < 0.35 else r.uniform(-5, 1)  # out of order, or about now
        return (self.base + timedelta(seconds=offset)).isoformat().replace("+00:00", "Z")

    def envelope(self, r: random.Random, type_: str, data, *, source: str | None = None, token: str | None = None,
                 binary: bool | None = None, drop: str | None = None, override: dict | None = None,
                 time: str | None | bool = True) -> tuple[dict, str | None, bytes, str]:
        token = token or self.ledger.new_token()
        attrs = {"specversion": "1.0", "id": token, "source": source or r.choice(ALLOWED), "type": type_}
        stamp = self._time(r) if time is True else time
        if stamp:
            attrs["time"] = stamp
        if r.random() < 0.1:
            attrs["subject"] = None if r.random() < 0.5 else "some/branch"  # null attribute = absent
        attrs.update(override or {})
        if drop:
            attrs.pop(drop, None)
        if binary is None:
            binary = r.random() < 0.3
        if binary and all(isinstance(v, str) or v is None for v in attrs.values()):
            prefix = "cloudEvents_" if r.random() < 0.2 else "ce-"
            headers = {f"{prefix}{k}": v for k, v in attrs.items() if v is not None}
            return headers, "application/json", json.dumps(data).encode(), token
        body = {**attrs, "datacontenttype": "application/json", "data": data}
        content_type = r.choice([STRUCTURED, STRUCTURED, f"{STRUCTURED}; charset=utf-8", "application/json"])
        return {}, content_type, json.dumps(body).encode(), token

    def emit(self, msg: Msg) -> Msg:
        self.out.append(msg)  # into the ledger only once the whole example was drawn (commit)
        return msg

    def commit(self) -> list[Msg]:
        for msg in self.out:
            if not msg.duplicate:
                self.ledger.add(Published(key=msg.key, token=msg.token, type=msg.type, job=msg.job,
                                          category=msg.category, expect_dead=msg.expect == "dead"))
        return self.out

    def _msg(self, r, category, type_, data, expect="apply", hint=None, job=None, wave=0, **kw) -> Msg:
        headers, content_type, body, token = self.envelope(r, type_, data, **kw)
        source = (kw.get("override") or {}).get("source", kw.get("source"))
        key = None
        if isinstance(source, str) or source is None:
            try:
                obj = json.loads(body) if not headers else None
                src = obj["source"] if obj else next(v for k, v in headers.items() if k.lower().endswith("source"))
                key = event_key(src, token) if isinstance(src, str) else None
            except (ValueError, KeyError, StopIteration, TypeError):
                key = None
        return self.emit(Msg(headers, content_type, body, type_ if isinstance(type_, str) else "x", token, category,
                             expect, hint, job, type_ if isinstance(type_, str) else None, key, wave))

    # --- valid job events --------------------------------------------------------------

    def started(self, r: random.Random) -> Msg:
        self.jobs += 1
        job = f"h-{self.ledger.tag}-{self.jobs}"
        shadow = r.random() < 0.08
        data: dict = {"job_id": job, ("branch_name" if r.random() < 0.2 else "branch"): r.choice(BRANCHES)}
        roll = r.random()
        if roll < 0.2:
            data["resource_types"] = []
        elif roll < 0.9:
            data["resource_types"] = r.sample(RESOURCE_TYPES, r.randint(1, 3))
            if r.random() < 0.1:
                data["resource_types"].append(data["resource_types"][0])  # a repeated type: one lock
        if r.random() < 0.7:
            data["ttl_s"] = r.choice([r.uniform(0.05, 3), r.uniform(30, 3600)])
        if r.random() < 0.7:
            data["heartbeat_interval_s"] = r.choice([r.uniform(0.05, 1), r.uniform(10, 300)])
        if shadow:
            data["indexing_mode"] = "shadow"
            data["index_type"] = r.choice(["SEARCH_INDEX", "GRAPH_INDEX"])
        data["service_name"] = r.choice(["funnel", "funnel-ü", "x" * 300])
        msg = self._msg(r, "valid", "com.oms.indexing.started", data, job=job, wave=0)
        self.open[job] = {"shadow": shadow, "beats": 0}
        self.sendable.append(msg)
        return msg

    def heartbeat(self, r: random.Random, job: str, eta=None) -> Msg:
        data: dict = {"job_id": job, "status": r.choice(["healthy", "slow", "ok"])}
        if r.random() < 0.5:
            if r.random() < 0.3:
                data["progress_info"] = {"indexing_progress": r.uniform(0, 100)}
            else:
                data["progress_percent"] = r.uniform(0, 100)
        if eta is not None:
            data["estimated_remaining_s"] = eta
        elif r.random() < 0.3:
            data["estimated_remaining_s"] = r.uniform(0, 20000)
        if r.random() < 0.2:
            data["records_indexed" if r.random() < 0.5 else "record_count"] = r.randint(0, 10**6)
        type_ = r.choice(["com.oms.indexing.heartbeat", "com.oms.indexing.progress"])
        if eta is not None and not math.isfinite(eta):  # inf or nan: refused; beyond ten years: capped, applied
            msg = self._msg(r, "extreme_eta", type_, data, expect="dead", hint="estimated_remaining_s", job=job, wave=1)
            self.sendable.append(msg)
            return msg
        msg = self._msg(r, "valid" if eta is None else "extreme_eta", type_, data, job=job, wave=1)
        self.sendable.append(msg)
        return msg

    def end(self, r: random.Random, job: str) -> Msg:
        info = self.open.pop(job)
        roll = r.random()
        if roll < 0.7:
            type_ = "com.oms.indexing.completed"
            data = {"job_id": job, "record_count": r.randint(0, 10**6), "index_size_bytes": r.randint(0, 10**9)}
            if info["shadow"]:
                data["location"] = "/nonexistent/chaos-index"
        elif roll < 0.85:
            type_, data = "com.oms.indexing.failed", {"job_id": job, "error": "boom " * r.randint(0, 50)}
        else:
            type_, data = "com.oms.indexing.cancelled", {"job_id": job, "reason": "operator"}
        msg = self._msg(r, "valid", type_, data, job=job, wave=2)
        self.sendable.append(msg)
        if info["shadow"] and r.random() < 0.5:  # and ask to switch it in (validation fails or rolls back);
            # "either": if its registration was refused (another build of that index in flight), the
            # build does not exist and the request is dead-lettered as "cannot be applied"
            self._msg(r, "switch", "com.oms.shadow.switch.requested",
                      {"shadow_index_id": f"shadow-{job}", "force": r.random() < 0.3}, expect="either", job=job,
                      wave=2)
        return msg

    # --- one message -------------------------------------------------------------------

    def one(self, data) -> None:
        r = self.r
        roll = data.draw(st.integers(0, 99), label="category")
        if roll < 24 or (roll < 50 and not self.open):
            self.started(r)
        elif roll < 38:
            self.heartbeat(r, r.choice(list(self.open)))
        elif roll < 48:
            self.end(r, r.choice(list(self.open)))
        elif roll < 53 and self.sendable:
            original = r.choice(self.sendable[-200:])
            self.emit(Msg(**{**original.__dict__, "duplicate": True, "category": "duplicate"}))
        elif roll < 56:
            self.bad_json(r, data)
        elif roll < 58:
            self.not_object(r, data)
        elif roll < 62:
            self.missing_attribute(r)
        elif roll < 67:
            self.wrong_attribute_type(r, data)
        elif roll < 70:
            self.unknown_type(r, data)
        elif roll < 77:
            self.invalid_data(r, data)
        elif roll < 81:
            self.forged_source(r, data)
        elif roll < 82:
            self.huge(r)
        elif roll < 84:
            self.not_a_cloudevent(r, data)
        elif roll < 86:
            self.non_utf8(r, data)
        elif roll < 93:
            self.unknown_job(r, data)
        elif roll < 95 and self.open:
            eta = data.draw(st.sampled_from([1e11, 1e12, 1e300, float("inf")]) | st.floats(min_value=1e10),
                            label="extreme eta")
            self.heartbeat(r, r.choice(list(self.open)), eta=eta)
        else:
            self.odd_but_valid(r, data)

    # --- hostile categories ----------------------------------------------------------

    def bad_json(self, r, data) -> None:
        token = self.ledger.new_token()
        junk = data.draw(st.text(max_size=40), label="junk")
        body = f'{{"specversion": "1.0", "id": "{token}", "source": "funnel-a", "data": {{{junk}'.encode()
        self.emit(Msg({}, STRUCTURED, body, "com.oms.indexing.started", token, "bad_json", "dead", "not JSON"))

    def not_object(self, r, data) -> None:
        token = self.ledger.new_token()
        value = data.draw(st.one_of(st.integers(), st.text(max_size=10), st.booleans()), label="scalar")
        body = json.dumps(r.choice([[token, value], f"{token}{value}"])).encode()
        self.emit(Msg({}, STRUCTURED, body, "x", token, "not_object", "dead", "must be a JSON object"))

    def missing_attribute(self, r) -> None:
        drop = r.choice(["specversion", "id", "source", "type"])
        headers, ct, body, token = self.envelope(r, "com.oms.indexing.heartbeat", {"job_id": "j", "t": "?"},
                                                 drop=drop, binary=r.random() < 0.5)
        if drop == "id":  # the token must still be findable in the dead letter
            body = body if headers else body.replace(b'"data": {', f'"data": {{"trace": "{token}", '.encode())
            headers = {**headers, "x-chaos-token": token} if headers else headers
        hint = None if drop == "specversion" else "required attribute"  # no specversion: maybe "not a CloudEvent"
        self.emit(Msg(headers, ct, body, "com.oms.indexing.heartbeat", token, "missing_attribute", "dead", hint))

    def wrong_attribute_type(self, r, data) -> None:
        weird = data.draw(st.one_of(st.integers(), st.floats(allow_nan=False), st.lists(st.integers(), max_size=2),
                                    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.booleans(),
                                    st.just("")), label="weird attribute")
        name = r.choice(["id", "source", "type", "specversion", "time", "data"])
        token = self.ledger.new_token()
        attrs = {"specversion": "1.0", "id": token, "source": "funnel-a", "type": "com.oms.indexing.heartbeat",
                 "data": {"job_id": "j", "trace": token}}
        if name == "time":
            weird = data.draw(st.text(max_size=12).filter(lambda s: not s[:1].isdigit()), label="bad time")
        attrs[name] = weird
        hint = {"time": "RFC 3339", "data": None}.get(name, "required attribute")
        if name == "specversion" and isinstance(weird, str) and weird:
            hint = None
        if name == "data" and isinstance(weird, dict):
            expect, hint = "either", None  # an object is fine data: invalid payload -> dead, else applied
        else:
            expect = "dead"
        body = json.dumps(attrs).encode()  # the token stays in the body: as the id, or in data.trace
        self.emit(Msg({}, STRUCTURED, body, "x", token, f"wrong_type:{name}", expect, hint))

    def unknown_type(self, r, data) -> None:
        type_ = data.draw(st.one_of(st.just("com.oms.indexing.exploded"), st.text(min_size=1, max_size=30)),
                          label="unknown type").strip() or "?"
        if type_ in ROUTES:
            type_ += ".v2"
        self._msg(r, "unknown_type", type_, {"job_id": "j"}, expect="dead", hint="unknown event type")

    def invalid_data(self, r, data) -> None:
        type_ = r.choice(KNOWN)
        bad_job = data.draw(st.one_of(st.integers(), st.just(""), st.lists(st.text(max_size=3), max_size=2),
                                      st.none(), st.just("j" * 513)), label="bad job id")
        started_bad = [{"job_id": "ok", "branch": "main", "resource_types": "object_type"},
                       {"job_id": "ok", "branch": "main", "resource_types": [""]},
                       {"job_id": "ok", "branch": "main", "indexing_mode": "fast"},
                       {"job_id": "ok", "branch": "main", "ttl_s": r.choice([0, -5])},
                       {"job_id": "ok", "branch": "main", "heartbeat_interval_s": r.choice([0, 1e9])},
                       {"job_id": "ok"}, {"job_id": bad_job, "branch": "main"}]
        hb_bad = [{"job_id": "ok", "progress_percent": r.choice([150, -1])},
                  {"job_id": "ok", "estimated_remaining_s": -3}, {"job_id": bad_job}, {}]
        if type_ == "com.oms.indexing.started":
            payload = r.choice(started_bad)
        elif type_ in ("com.oms.indexing.heartbeat", "com.oms.indexing.progress"):
            payload = r.choice(hb_bad)
        elif type_ == "com.oms.shadow.switch.requested":
            payload = r.choice([{}, {"force": True}, {"shadow_index_id": ""}])
        else:
            payload = r.choice([{}, {"job_id": bad_job}, {"job_id": "", "shadow_index_id": ""}])
        self._msg(r, "invalid_data", type_, payload, expect="dead", hint="data is invalid")

    def forged_source(self, r, data) -> None:
        source = data.draw(st.text(min_size=1, max_size=20), label="forged source")
        if source in ALLOWED:
            source += "-x"
        job = r.choice(list(self.open)) if self.open and r.random() < 0.5 else "forged-job"
        self._msg(r, "forged_source", "com.oms.indexing.completed", {"job_id": job}, expect="dead",
                  hint="INDEXGATE_SOURCE_ALLOWLIST", source=source)

    def huge(self, r) -> None:
        size = self.max_bytes + r.randint(1, self.max_bytes)
        job = f"huge-{self.ledger.tag}-{self.jobs}"
        self._msg(r, "huge", "com.oms.indexing.started", {"job_id": job, "branch": "main", "blob": "x" * size},
                  expect="dead", hint="INDEXGATE_MAX_EVENT_BYTES")

    def not_a_cloudevent(self, r, data) -> None:
        token = self.ledger.new_token()
        text = data.draw(st.text(max_size=30), label="plain text")
        ct = r.choice(["text/plain", None, "application/xml", "application/json"])
        body = f"{token} {text}".encode()
        self.emit(Msg({"x-other": "1"}, ct, body, "x", token, "not_a_cloudevent", "dead", None))

    def non_utf8(self, r, data) -> None:
        token = self.ledger.new_token()
        noise = data.draw(st.binary(min_size=1, max_size=40), label="bytes")
        body = b"\xff\xfe" + token.encode() + b"\x80" + noise
        self.emit(Msg({}, STRUCTURED, body, "x", token, "non_utf8", "dead", None))

    def unknown_job(self, r, data) -> None:
        job = data.draw(st.text(min_size=1, max_size=40), label="unknown job")
        type_ = r.choice(["com.oms.indexing.heartbeat", "com.oms.indexing.completed", "com.oms.indexing.failed",
                          "com.oms.indexing.cancelled"])
        self._msg(r, "unknown_job", type_, {"job_id": f"ghost:{job}"}, expect="apply", wave=1)

    def odd_but_valid(self, r, data) -> None:
        """Legal, if unusual: ids with '|' and unicode, extra fields, times at the edges."""
        job = r.choice(list(self.open)) if self.open else "ghost"
        token = self.ledger.new_token()
        odd_id = r.choice([f"{token}|pipe", f"{token} ✓ ünï", token])
        extra = data.draw(st.dictionaries(st.text(max_size=8), st.one_of(st.none(), st.integers(), st.text(max_size=8)),
                                          max_size=3), label="extra fields")
        stamp = r.choice(["9999-12-31T23:59:59Z", "1970-01-01T00:00:00Z", "2024-02-29T12:00:00+14:00",
                          "0001-01-01T00:00:00+14:00"])
        payload = {**extra, "job_id": job, "status": "healthy"}
        headers, ct, body, _ = self.envelope(r, "com.oms.indexing.heartbeat", payload, token=odd_id, time=stamp)
        source = json.loads(body)["source"] if not headers else next(v for k, v in headers.items()
                                                                       if k.lower().endswith("source"))
        expect = "either" if stamp.startswith("0001") else "apply"
        self.emit(Msg(headers, ct, body, "com.oms.indexing.heartbeat", token, f"odd:{stamp[:4]}", expect, None, job,
                      "com.oms.indexing.heartbeat", event_key(source, odd_id), 1))


def generate(count: int, seed: int, ledger: Ledger, max_bytes: int, batch: int = 20) -> list[Msg]:
    """At least ``count`` messages (duplicates included), reproducible from ``seed``.

    Each Hypothesis example is self-contained (Hypothesis requires that what it draws
    depends only on earlier draws of the same example): a burst of ``batch`` messages with
    its own jobs, all of which end within the burst. Bursts share the branches and the
    store, so jobs of different bursts still contend for the same locks."""
    out: list[Msg] = []
    state = {"examples": 0, "jobs": 0}

    def one_example(data) -> None:  # depends on its own draws only (values may use counters)
        state["examples"] += 1
        gen = _Gen(ledger, max_bytes, first_job=state["jobs"])
        # cheap repeated choices: a Random seeded by Hypothesis; the nasty values: strategies
        gen.r = data.draw(st.randoms(use_true_random=True), label="choices")
        for _ in range(batch):
            gen.one(data)
        for job in list(gen.open):  # every job ends, so "lock held after its job ended" is checkable
            gen.end(gen.r, job)
        state["jobs"] = gen.jobs
        out.extend(gen.commit())

    for attempt in range(20):  # Hypothesis may run fewer examples than asked; top up with the next seed
        wanted = (count - len(out)) // batch + 1
        run = hypothesis_seed(seed + attempt)(settings(
            max_examples=wanted, database=None, phases=[Phase.generate], deadline=None,
            suppress_health_check=list(HealthCheck), derandomize=False, print_blob=False)(
            given(st.data())(one_example)))
        run()
        if len(out) >= count:
            break
    generate.examples = state["examples"]  # type: ignore[attr-defined]
    return out
