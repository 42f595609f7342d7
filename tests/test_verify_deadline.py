"""Post-switch verification has one wall-clock deadline (``INDEXGATE_VERIFY_TIMEOUT_S``).

It runs inside the switch's blackout, under an unrefreshed switch lock, so it must end in
time whatever the location does: a real local HTTP server that drips its answer a byte at
a time (no single phase ever times out), a chain of redirects, and a deployment's verifier
that does not return. A late answer counts as failed: the swap is rolled back, with the
reason. Each test shows the deadline causally - the switch has answered while the server
(or the verifier) is still busy - rather than by timing it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from indexgate.service import Service
from indexgate.verifiers import MAX_REDIRECTS, Verifiers
from tests.service_kit import Outbox
from tests.test_switch import BRANCH, current_id
from tests.test_verifiers import COUNT_ONLY, built_at, make

DEADLINE_S = 0.5
STALL_CAP_S = 15.0  # a stalled answer ends by itself after this, so a regression fails instead of hanging


class Stalling(BaseHTTPRequestHandler):
    """``/drip``: the answer's head a byte every 0.1 s until released; ``/hop/N``: N redirects to ``/ok``."""

    release = threading.Event()
    dripping = threading.Event()

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/drip":
            self._drip()
        elif self.path.startswith("/hop/"):
            hops = int(self.path.rsplit("/", 1)[1])
            self.send_response(302 if hops else 200)
            self.send_header("Location", f"/hop/{hops - 1}" if hops else "/ok")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def _drip(self) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Padding: " + b"." * 200 + b"\r\n\r\n"
        self.dripping.set()
        ends = time.monotonic() + STALL_CAP_S
        try:
            for byte in head[:-4]:
                if self.release.is_set() or time.monotonic() > ends:
                    break
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.1)  # well inside any read timeout: no single phase ever times out
            self.wfile.write(b"\r\n\r\n")
        except OSError:  # the verifier hung up
            pass
        finally:
            self.dripping.clear()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def stalling_base() -> Iterator[str]:
    Stalling.release.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stalling)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    Stalling.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def service(tmp_path: Path) -> Service:
    return make(tmp_path, Outbox(), Verifiers(timeout_s=DEADLINE_S))


def test_an_answer_dripping_past_the_deadline_is_rolled_back(service: Service, stalling_base: str) -> None:
    old = built_at(service, "job-old", f"{stalling_base}/ok")
    assert service.shadows.switch(old, checks=COUNT_ONLY).status == "switched"
    new = built_at(service, "job-new", f"{stalling_base}/drip")
    result = service.shadows.switch(new, checks=COUNT_ONLY)
    still_dripping = Stalling.dripping.is_set()  # the server is still sending its answer's head
    Stalling.release.set()
    assert result.status == "rolled_back", result.detail
    assert f"within {DEADLINE_S:g} s" in result.detail and "INDEXGATE_VERIFY_TIMEOUT_S" in result.detail
    assert still_dripping
    assert current_id(service) == old and service.shadows.status(new)["state"] == "FAILED"
    assert service.check(BRANCH, "object_type").allowed  # the blackout is over


def test_redirects_are_followed_a_few_times_only(service: Service, stalling_base: str) -> None:
    near = built_at(service, "job-near", f"{stalling_base}/hop/{MAX_REDIRECTS}")
    assert service.shadows.switch(near, checks=COUNT_ONLY).status == "switched"
    far = built_at(service, "job-far", f"{stalling_base}/hop/{MAX_REDIRECTS + 1}")
    result = service.shadows.switch(far, checks=COUNT_ONLY)
    assert result.status == "rolled_back" and "TooManyRedirects" in result.detail
    assert current_id(service) == near


def test_a_deployment_verifier_that_does_not_return_in_time_is_rolled_back(tmp_path: Path) -> None:
    called, answer_now, answered = threading.Event(), threading.Event(), threading.Event()

    def es_alias(location: str) -> bool:
        called.set()
        answer_now.wait(STALL_CAP_S)
        answered.set()
        return True  # too late: it must not count

    service = make(tmp_path, Outbox(), Verifiers(timeout_s=DEADLINE_S, custom={"es": es_alias}))
    ref = built_at(service, "job-1", "es://cluster/products-v2")
    result = service.shadows.switch(ref, checks=COUNT_ONLY)
    still_running = called.is_set() and not answered.is_set()
    answer_now.set()
    assert result.status == "rolled_back", result.detail
    assert f"gave no answer within {DEADLINE_S:g} s" in result.detail and "es_alias" in result.detail
    assert still_running
    assert answered.wait(STALL_CAP_S)  # its late True arrives now ...
    assert current_id(service) is None and service.shadows.status(ref)["state"] == "FAILED"  # ... and changes nothing
    assert service.shadows.status(ref)["verification"]["outcome"] == "failed"
    assert service.check(BRANCH, "object_type").allowed
