"""``indexgate.client.Gate`` against a running ``indexgate serve`` (and against servers that
misbehave, built from the standard library): it answers only from a 200 about exactly what
was asked and raises ``GateError`` on everything else; it waits out short denials; its L1
cache is invalidated by a lock a real worker granted, and bypassed whenever the change
stream is down. Also: importing the client pulls in no worker dependency.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis

from bench.chaos.servers import RedisServer
from indexgate.client import Gate
from indexgate.clock import poll
from indexgate.events.publisher import Publisher
from indexgate.errors import GateBadRequest, GateError, GateMalformedAnswer, GateUnauthorized, GateUnavailable
from indexgate.locks import AcquireRequest
from indexgate.outcomes import Origin
from indexgate.schemas.records import LockKind, ReleaseReason
from indexgate.service import Service
from indexgate.testing.api import api_process
from indexgate.testing.broker_names import delete_run_names
from indexgate.testing.processes import PROJECT_ROOT
from tests.conftest import BROKERS, REDIS_URL, isolated_settings, require_reachable, worker_processes
from tests.test_api import seeded, send, start  # noqa: F401 (seeded: a fixture)

# (not click: httpx imports its own optional CLI when click happens to be installed, as it is
# here beside the server; the bare install has no click - tests/test_packaging.py)
WORKER_DEPENDENCIES = ("celery", "kombu", "pymongo", "redis", "cloudevents", "pydantic_settings", "fastapi",
                       "uvicorn", "starlette", "indexgate.api", "indexgate.service", "indexgate.store")


def test_importing_the_client_loads_no_worker_dependency() -> None:
    code = ("import json, sys; import indexgate.client; "
            f"print(json.dumps(sorted(m for m in sys.modules if m in {WORKER_DEPENDENCIES!r} "
            f"or m.split('.')[0] in {WORKER_DEPENDENCIES!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_gate_answers_allowed_and_denied_with_the_decision(seeded) -> None:
    settings, service = seeded
    start(service, "job-1", ["object_type"])
    send(service, "com.oms.indexing.progress", {"job_id": "job-1", "progress_percent": 55,
                                                 "estimated_remaining_s": 600}, "p-1")
    with api_process(settings) as url, Gate(url, timeout_s=5) as gate:
        assert gate.check("main", "link_type").allowed
        denied = gate.check("main", "object_type")
        assert not denied.allowed and denied.blocking_lock.holder == "funnel-7"
        assert denied.blocking_lock.progress_percent == 55 and 500 < denied.retry_after_s <= 600
        whole = gate.check("main", None)
        assert not whole.allowed and whole.resource_type is None
        assert gate.check("main", "object_type", action="draft").allowed
        with pytest.raises(GateBadRequest):
            gate.check("", "object_type")
        assert gate.stats.server_checks == 5


def test_gate_raises_on_an_uninitialized_store_and_a_missing_token(tmp_path: Path) -> None:
    require_reachable(REDIS_URL)
    settings = isolated_settings(tmp_path, REDIS_URL, initialize=False, api_token="t0ken")
    try:
        with api_process(settings) as url:
            with Gate(url, timeout_s=5) as no_token, pytest.raises(GateUnauthorized) as refused:
                no_token.check("main", "object_type")
            assert refused.value.status_code == 401
            with Gate(url, token="t0ken", timeout_s=5) as gate, pytest.raises(GateUnavailable) as unknown:
                gate.check("main", "object_type")
            assert unknown.value.status_code == 503 and "not exist" in str(unknown.value)
    finally:
        delete_run_names(settings)


# --- servers that misbehave (stdlib only: nothing shared with indexgate) -----------------


@contextmanager
def fake_server(status: int, body: bytes, delay_s: float = 0.0):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            time.sleep(delay_s)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


ALLOWED_ABOUT_MAIN = {"allowed": True, "branch": "main", "resource_type": "object_type", "action": "write",
                      "message": "ok", "blocking_lock": None, "retry_after_s": None, "version": 1}


@pytest.mark.parametrize(("status", "body", "error"), [
    (500, b'{"detail": "boom"}', GateUnavailable),
    (502, b"<html>bad gateway</html>", GateUnavailable),
    (503, b'{"error": "store_timeout", "detail": "slow"}', GateUnavailable),
    (200, b"<html>a captive portal</html>", GateMalformedAnswer),
    (200, b'{"allowed": true}', GateMalformedAnswer),
    (200, json.dumps(ALLOWED_ABOUT_MAIN | {"branch": "other"}).encode(), GateMalformedAnswer),
    (200, json.dumps(ALLOWED_ABOUT_MAIN | {"allowed": "yes please"}).encode(), GateMalformedAnswer),
    (302, b"", GateMalformedAnswer),
    (401, b'{"detail": "no"}', GateUnauthorized),
    (404, b'{"detail": "wrong path"}', GateBadRequest),
])
def test_gate_never_reads_a_bad_answer_as_allowed(status: int, body: bytes, error: type[GateError]) -> None:
    with fake_server(status, body) as url, Gate(url, timeout_s=2) as gate:
        with pytest.raises(error):
            gate.check("main", "object_type")
    with fake_server(200, json.dumps(ALLOWED_ABOUT_MAIN).encode()) as url, Gate(url, timeout_s=2) as gate:
        assert gate.check("main", "object_type").allowed  # the same server, answering right


def test_gate_raises_on_timeouts_and_refused_connections() -> None:
    with fake_server(200, json.dumps(ALLOWED_ABOUT_MAIN).encode(), delay_s=1.0) as url:
        with Gate(url, timeout_s=0.2) as gate, pytest.raises(GateUnavailable) as late:
            gate.check("main", "object_type")
    assert "within 0.2 s" in str(late.value)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with Gate(f"http://127.0.0.1:{port}", timeout_s=1) as gate, pytest.raises(GateUnavailable):
        gate.check("main", "object_type")


def test_gate_waits_out_a_switch_blackout_but_not_a_long_build(seeded) -> None:
    settings, service = seeded
    switch = AcquireRequest(job_id="switch-1", holder="indexgate-switch", resource_types=("object_type",),
                            reason="switch", ttl_s=60, heartbeat_interval_s=2, kind=LockKind.SWITCH)
    service.acquire("main", switch, Origin(actor="test"))
    start(service, "long", ["link_type"])
    send(service, "com.oms.indexing.progress", {"job_id": "long", "estimated_remaining_s": 3600}, "p-long")
    with api_process(settings) as url, Gate(url, timeout_s=5, max_wait_s=3) as gate:
        threading.Timer(0.3, lambda: service.release("main", "switch-1", ReleaseReason.COMPLETED,
                                                     Origin(actor="test"))).start()
        assert gate.check("main", "object_type").allowed  # waited for the switch to end
        assert gate.stats.waits >= 1
        started = time.monotonic()
        long = gate.check("main", "link_type")
        assert not long.allowed and long.retry_after_s > 3000
        assert time.monotonic() - started < 2.5  # answered, not slept through the budget


# --- the L1 cache ---------------------------------------------------------------------


def _funnel_start(settings, job: str, branch: str, resource_type: str) -> None:
    """What the funnel does on Redis, with plain redis-py: one structured CloudEvent per
    entry of the intake stream (the README's wire format)."""
    event = {"specversion": "1.0", "id": uuid.uuid4().hex, "source": "funnel", "type": "com.oms.indexing.started",
             "time": datetime.now(timezone.utc).isoformat(), "datacontenttype": "application/json",
             "data": {"job_id": job, "branch": branch, "resource_types": [resource_type], "service_name": "funnel"}}
    conn = redis.Redis.from_url(REDIS_URL)
    conn.xadd(f"{settings.intake_queue}.stream", {"body": json.dumps(event), "content-type": "application/cloudevents+json"})
    conn.close()


@pytest.mark.slow
def test_a_lock_granted_by_a_real_worker_invalidates_a_cached_allowed(seeded) -> None:
    settings, _ = seeded
    staleness_s = 60.0
    with worker_processes(settings, count=1), api_process(settings) as url, \
            Gate(url, timeout_s=5, max_staleness_ms=staleness_s * 1000) as gate:
        assert poll(lambda: gate.cache_active, 20), "the change stream never became ready"
        assert gate.check("main", "object_type").allowed and gate.check("main", "object_type").allowed
        assert gate.stats.cache_hits == 1 and gate.stats.server_checks == 1  # the second answer was cached
        published_at = time.monotonic()
        _funnel_start(settings, "job-w", "main", "object_type")
        denied = poll(lambda: (d := gate.check("main", "object_type")) and not d.allowed and d, 20, every_s=0.005)
        seen_after_s = time.monotonic() - published_at
    assert denied, "the cached allowed was never invalidated"
    assert denied.blocking_lock.job_id == "job-w" and seen_after_s < staleness_s
    assert gate.stats.invalidations >= 1 and gate.stats.server_checks >= 2


def test_no_change_stream_means_no_cache(seeded) -> None:
    """The API's broker is unreachable: its change feed is down, /v1/changes says so, and
    every check goes to the server - a lock taken meanwhile is seen at once."""
    settings, service = seeded
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead_broker = f"redis://127.0.0.1:{closed.getsockname()[1]}/0"
    api_settings = settings.model_copy(update={"broker_url": dead_broker})
    with api_process(api_settings) as url, Gate(url, timeout_s=5, max_staleness_ms=60_000) as gate:
        time.sleep(1.0)  # time enough for a stream to become ready, were it up
        for _ in range(20):
            assert gate.check("main", "object_type").allowed
        assert not gate.cache_active and gate.stats.cache_hits == 0 and gate.stats.server_checks == 20
        service.acquire("main", AcquireRequest(job_id="j", holder="h", resource_types=("object_type",), reason="r"),
                        Origin(actor="test"))
        assert not gate.check("main", "object_type").allowed


@pytest.mark.slow
def test_a_lost_subscription_turns_the_cache_off_until_it_is_back(tmp_path: Path) -> None:
    """A private redis-server is the API's broker; killing it makes the server say ``down``,
    and the Gate bypasses its cache at once; when Redis is back, so is the cache."""
    broker = RedisServer(tmp_path / "redis")
    broker.start()
    settings = isolated_settings(tmp_path / "data", broker.url)
    try:
        with api_process(settings) as url, Gate(url, timeout_s=5, max_staleness_ms=60_000) as gate:
            assert poll(lambda: gate.cache_active, 20)
            gate.check("main", "object_type")
            gate.check("main", "object_type")
            assert gate.stats.cache_hits == 1
            broker.proc.kill()
            broker.proc.wait()
            assert poll(lambda: not gate.cache_active, 15), "the cache stayed on without a subscription"
            before = gate.stats.server_checks
            for _ in range(5):
                gate.check("main", "object_type")
            assert gate.stats.server_checks == before + 5
            broker.start()
            assert poll(lambda: gate.cache_active, 30), "the cache did not come back with the broker"
    finally:
        if broker.proc and broker.proc.poll() is None:
            broker.proc.kill()


@pytest.mark.parametrize("broker", list(BROKERS))
def test_the_change_feed_works_on_every_broker(tmp_path: Path, broker: str) -> None:
    """The server's subscription on RabbitMQ, Redis and the embedded broker: a commit
    announced there (as a worker announces it) drops the cached answer."""
    url_of_broker = BROKERS[broker]
    if url_of_broker:
        require_reachable(url_of_broker)
    settings = isolated_settings(tmp_path, url_of_broker)
    publisher = Publisher(settings)
    service = Service.from_settings(settings, notify=publisher.publish_entries)
    try:
        with api_process(settings) as url, Gate(url, timeout_s=5, max_staleness_ms=60_000) as gate:
            assert poll(lambda: gate.cache_active, 20), f"no change stream on {broker}"
            assert gate.check("b", "object_type").allowed and gate.check("b", "object_type").allowed
            assert gate.stats.cache_hits == 1
            service.acquire("b", AcquireRequest(job_id="j", holder="h", resource_types=("object_type",), reason="r"),
                            Origin(actor="test"))
            assert poll(lambda: not gate.check("b", "object_type").allowed, 20, every_s=0.005)
            assert gate.stats.invalidations >= 1
    finally:
        publisher.close()
        service.store.close()
        delete_run_names(settings)
