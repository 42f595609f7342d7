"""Index locations of any kind: post-switch verification chosen by the location's kind.

Switches run through the Service over a real SQLite store; http locations are served by a
real local HTTP server (``http.server`` in a thread); the deployment's own verifier is a
real callable (``tests/verifier_plugin.py``) registered by setting and by entry point (a
``.dist-info`` on ``sys.path``, found by ``importlib.metadata`` as pip-installed ones are).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from indexgate import locations
from indexgate.errors import ConfigError
from indexgate.events.outgoing import to_cloudevent
from indexgate.locks import Policy
from indexgate.schemas.records import AuditKind
from indexgate.schemas.shadows import VerifyOutcome
from indexgate.service import Service
from indexgate.settings import Settings
from indexgate.switch_policy import SwitchPolicy
from indexgate.store.sqlite import SqliteStore
from indexgate.testing.indexes import write_index
from indexgate.verifiers import ENTRY_POINT_GROUP, Verifiers
from tests import verifier_plugin
from tests.service_kit import T0, Outbox
from tests.test_switch import BRANCH, INDEX, complete, current_id, entries, start

COUNT_ONLY = ["RECORD_COUNT_VALIDATION"]


class Handler(BaseHTTPRequestHandler):
    """``/ok`` 200, ``/missing`` 404, ``/no-head`` refuses HEAD (405) and answers GET 200."""

    seen: list[tuple[str, str]] = []

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self.seen.append(("HEAD", self.path))
        self._answer({"/ok": 200, "/no-head": 405}.get(self.path, 404))

    def do_GET(self) -> None:  # noqa: N802
        self.seen.append(("GET", self.path))
        self._answer({"/ok": 200, "/no-head": 200}.get(self.path, 404), b"index body")

    def _answer(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Handler.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def outbox() -> Outbox:
    return Outbox()


def make(tmp_path: Path, outbox: Outbox, verifiers: Verifiers | None = None, **switch) -> Service:
    store = SqliteStore(tmp_path / "store.db")
    store.initialize()
    return Service(store, Policy(), clock=lambda: T0, notify=outbox,
                   switch=SwitchPolicy(verifiers=verifiers or Verifiers(timeout_s=1.0), **switch))


@pytest.fixture
def service(tmp_path: Path, outbox: Outbox) -> Service:
    return make(tmp_path, outbox)


def built_at(service: Service, job: str, location: str, records: int = 10) -> str:
    assert start(service, job).status == "applied"
    assert complete(service, job, location, records, records * 10).status == "applied"
    return f"shadow-{job}"


def switched_event(outbox: Outbox, ref: str) -> dict:
    """The outgoing ``switched`` CloudEvent's data, as consumers receive it."""
    [entry] = [e for e in outbox.sent if e.kind is AuditKind.SWITCHED and e.detail.get("shadow_index_id") == ref]
    event = to_cloudevent(entry, "indexgate")
    assert event.get_type() == "com.indexgate.shadow.switched"
    return event.get_data()


def assert_active(service: Service, outbox: Outbox, ref: str, verified: bool, reason: str) -> None:
    """ACTIVE, and the build, the pointer and the outgoing event all carry the verification."""
    assert current_id(service) == ref and service.shadows.status(ref)["state"] == "ACTIVE"
    status = service.shadows.status(ref)
    pointer = service.shadows.current(BRANCH, INDEX)
    data = switched_event(outbox, ref)
    assert status["verified"] is verified and pointer.verification.verified is verified
    assert data["detail"]["verified"] is verified and data["detail"]["verification"]["verified"] is verified
    for said in (status["verification"]["reason"], pointer.verification.reason, data["detail"]["verification"]["reason"]):
        assert reason in said


# --- kinds ---------------------------------------------------------------------------


@pytest.mark.parametrize(("location", "kind"), [
    ("/srv/indexes/products-v2", "file"), ("file:///srv/indexes/products%20v2", "file"), ("indexes/p2", "file"),
    ("http://search:9200/products", "http"), ("HTTPS://search/products", "https"), ("es://cluster/products", "es"),
    ("products-v2", "index-name"), (None, "none"), ("", "none"),
])
def test_kind_of_a_location(location: str | None, kind: str) -> None:
    assert locations.kind_of(location) == kind
    assert (locations.as_path(location) is not None) is (kind == "file")


def test_a_file_url_is_decoded_to_its_path() -> None:
    assert locations.as_path("file:///srv/indexes/products%20v2") == Path("/srv/indexes/products v2")


# --- opaque pointers -----------------------------------------------------------------


@pytest.mark.parametrize(("location", "kind"), [("es://cluster/products-v2", "es"), ("products-v2", "index-name")])
def test_an_opaque_location_switches_unverified(service: Service, outbox: Outbox, location: str, kind: str) -> None:
    ref = built_at(service, "job-1", location)
    result = service.shadows.switch(ref, checks=COUNT_ONLY)
    assert result.status == "switched" and result.verification.outcome is VerifyOutcome.NO_VERIFIER
    assert_active(service, outbox, ref, verified=False, reason=f"no verifier for {kind}")
    assert service.shadows.current(BRANCH, INDEX).location == location
    assert service.check(BRANCH, "object_type", "write").allowed


def test_a_switch_requested_event_switches_an_index_name_in(service: Service, outbox: Outbox) -> None:
    from tests.test_switch import send

    ref = built_at(service, "job-1", "products-v2")
    outcome = send(service, "com.oms.shadow.switch.requested",
                   {"shadow_index_id": ref, "validation_checks": ["RECORD_COUNT_VALIDATION", "SIZE_COMPARISON"]})
    assert outcome.status == "switched"
    assert_active(service, outbox, ref, verified=False, reason="no verifier for index-name")


def test_a_build_without_location_switches_unverified(service: Service, outbox: Outbox) -> None:
    assert start(service, "job-1").status == "applied"
    from tests.test_switch import send

    send(service, "com.oms.indexing.completed", {"job_id": "job-1", "record_count": 5})
    assert service.shadows.switch("shadow-job-1", checks=COUNT_ONLY).status == "switched"
    assert_active(service, outbox, "shadow-job-1", verified=False, reason="no location to verify")


# --- directories ---------------------------------------------------------------------


def test_a_directory_without_manifest_switches_verified(service: Service, outbox: Outbox, tmp_path: Path) -> None:
    folder = tmp_path / "written-by-another-tool"
    folder.mkdir()
    (folder / "segment-0.bin").write_bytes(b"\0" * 64)
    ref = built_at(service, "job-1", str(folder))
    assert service.shadows.switch(ref, checks=COUNT_ONLY).status == "switched"
    assert_active(service, outbox, ref, verified=True, reason="is a directory")


def test_integrity_check_without_manifest_fails_validation_and_the_pointer_stays(service: Service, outbox: Outbox,
                                                                                 tmp_path: Path) -> None:
    old = built_at(service, "job-old", write_index(tmp_path / "old", 10))
    assert service.shadows.switch(old).status == "switched"  # all three checks pass on a manifest directory
    folder = tmp_path / "new"
    folder.mkdir()
    new = built_at(service, "job-new", f"file://{folder}")
    result = service.shadows.switch(new)
    assert result.status == "validation_failed"
    [failed] = [c for c in result.checks if not c.passed]
    assert failed.check == "INTEGRITY_CHECK" and "has no manifest.json" in failed.detail
    assert current_id(service) == old and service.shadows.status(new)["state"] == "BUILT"
    assert "INTEGRITY_CHECK" in entries(service, AuditKind.SWITCH_FAILED, new)[0].reason


def test_integrity_check_of_an_opaque_location_fails_with_its_kind(service: Service) -> None:
    ref = built_at(service, "job-1", "es://cluster/products-v2")
    result = service.shadows.switch(ref, checks=["INTEGRITY_CHECK"])
    assert result.status == "validation_failed" and "is a es location, which has none" in result.detail
    assert current_id(service) is None


def test_validation_reads_no_manifest_unless_integrity_check_is_asked(service: Service, tmp_path: Path) -> None:
    def inspect(location):
        raise AssertionError("INTEGRITY_CHECK was not asked, yet the location was inspected")

    service.shadows.inspect = inspect
    ref = built_at(service, "job-1", write_index(tmp_path / "idx", 10))
    assert service.shadows.switch(ref, checks=["RECORD_COUNT_VALIDATION", "SIZE_COMPARISON"]).status == "switched"


def test_a_missing_directory_is_rolled_back_after_the_swap(service: Service, tmp_path: Path) -> None:
    old = built_at(service, "job-old", write_index(tmp_path / "old", 10))
    service.shadows.switch(old)
    new = built_at(service, "job-new", str(tmp_path / "never-written"))
    result = service.shadows.switch(new, checks=COUNT_ONLY)
    assert result.status == "rolled_back" and "does not exist" in result.detail
    assert current_id(service) == old and service.shadows.status(new)["state"] == "FAILED"
    assert service.shadows.status(new)["verification"]["outcome"] == "failed"
    assert service.check(BRANCH, "object_type", "write").allowed


def test_the_filesystem_strategy_still_requires_a_local_directory(tmp_path: Path, outbox: Outbox) -> None:
    service = make(tmp_path, outbox, strategy="filesystem", links_dir=tmp_path / "links")
    ref = built_at(service, "job-1", "http://127.0.0.1:9/products")
    result = service.shadows.switch(ref, checks=COUNT_ONLY)
    assert result.status == "refused" and "needs a local directory" in result.detail
    assert current_id(service) is None


# --- http(s) -------------------------------------------------------------------------


def test_an_http_location_answering_2xx_switches_verified(service: Service, outbox: Outbox, http_base: str) -> None:
    ref = built_at(service, "job-1", f"{http_base}/ok")
    assert service.shadows.switch(ref, checks=COUNT_ONLY).status == "switched"
    assert_active(service, outbox, ref, verified=True, reason="HEAD")
    assert Handler.seen == [("HEAD", "/ok")]


def test_a_server_refusing_head_is_asked_with_get(service: Service, outbox: Outbox, http_base: str) -> None:
    ref = built_at(service, "job-1", f"{http_base}/no-head")
    assert service.shadows.switch(ref, checks=COUNT_ONLY).status == "switched"
    assert_active(service, outbox, ref, verified=True, reason="GET")
    assert Handler.seen == [("HEAD", "/no-head"), ("GET", "/no-head")]


def test_an_http_location_answering_404_is_rolled_back(service: Service, http_base: str, tmp_path: Path) -> None:
    old = built_at(service, "job-old", f"{http_base}/ok")
    assert service.shadows.switch(old, checks=COUNT_ONLY).status == "switched"
    new = built_at(service, "job-new", f"{http_base}/missing")
    result = service.shadows.switch(new, checks=COUNT_ONLY)
    assert result.status == "rolled_back" and "answered 404" in result.detail
    assert current_id(service) == old and service.shadows.status(new)["state"] == "FAILED"
    [rolled] = entries(service, AuditKind.ROLLED_BACK, new)
    assert "answered 404" in rolled.reason
    [failed] = [e for e in entries(service, AuditKind.SWITCH_FAILED, new) if "verification" in e.detail]
    assert failed.detail["verified"] is False and failed.detail["verification"]["outcome"] == "failed"


def test_an_unreachable_http_location_is_rolled_back(service: Service) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ref = built_at(service, "job-1", f"http://127.0.0.1:{port}/products")
    result = service.shadows.switch(ref, checks=COUNT_ONLY)
    assert result.status == "rolled_back" and "ConnectError" in result.detail
    assert current_id(service) is None and service.check(BRANCH, "object_type", "write").allowed


def test_the_verify_timeout_must_fit_the_switch_claim_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ok = SwitchPolicy.from_settings(Settings(data_dir=tmp_path, verify_timeout_s=2.5))
    assert ok.verifiers.timeout_s == 2.5
    monkeypatch.setenv("INDEXGATE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("INDEXGATE_VERIFY_TIMEOUT_S", "3")  # 2 x 3 s >= 3 x 2 s
    with pytest.raises(ConfigError, match=r"^invalid setting\(s\): INDEXGATE_VERIFY_TIMEOUT_S=3 is too long"):
        Settings.from_env()
    monkeypatch.setenv("INDEXGATE_SWITCH_LOCK_HEARTBEAT_INTERVAL_S", "3")
    assert Settings.from_env().verify_timeout_s == 3


# --- a deployment's own verifier ---------------------------------------------------------


@pytest.fixture
def plugin() -> Iterator[None]:
    verifier_plugin.KNOWN.clear()
    verifier_plugin.CALLS.clear()
    yield
    verifier_plugin.KNOWN.clear()


def settings_service(tmp_path: Path, outbox: Outbox, **overrides) -> Service:
    settings = Settings(data_dir=tmp_path, **overrides)
    store = SqliteStore(tmp_path / "store.db")
    store.initialize()
    return Service(store, Policy(), clock=lambda: T0, notify=outbox, switch=SwitchPolicy.from_settings(settings))


def test_a_verifier_named_by_the_setting_is_used_for_its_scheme(tmp_path: Path, outbox: Outbox, plugin) -> None:
    service = settings_service(tmp_path, outbox, verifiers={"es": "tests.verifier_plugin:es_alias"})
    verifier_plugin.KNOWN.add("products-v2")
    ref = built_at(service, "job-1", "es://cluster/products-v2")
    assert service.shadows.switch(ref, checks=COUNT_ONLY).status == "switched"
    assert_active(service, outbox, ref, verified=True, reason="alias products-v2 resolves")
    other = built_at(service, "job-2", "es://cluster/products-v3")
    result = service.shadows.switch(other, checks=COUNT_ONLY)
    assert result.status == "rolled_back" and "alias products-v3 is unknown" in result.detail
    assert current_id(service) == ref
    assert verifier_plugin.CALLS == ["es://cluster/products-v2", "es://cluster/products-v3"]
    # other kinds keep their verifier: an index name is still an opaque pointer
    name = built_at(service, "job-3", "products-v4")
    assert service.shadows.switch(name, checks=COUNT_ONLY).status == "switched"
    assert service.shadows.status(name)["verification"]["reason"] == "no verifier for index-name"


def test_a_verifier_that_raises_fails_the_verification(tmp_path: Path, outbox: Outbox, plugin) -> None:
    service = settings_service(tmp_path, outbox, verifiers={"es": "tests.verifier_plugin:exploding"})
    ref = built_at(service, "job-1", "es://cluster/products-v2")
    result = service.shadows.switch(ref, checks=COUNT_ONLY)
    assert result.status == "rolled_back" and "raised ConnectionError" in result.detail
    assert current_id(service) is None and service.check(BRANCH, "object_type", "write").allowed


def test_a_verifier_that_cannot_be_loaded_refuses_the_switch_before_any_lock(tmp_path: Path, outbox: Outbox) -> None:
    service = settings_service(tmp_path, outbox, verifiers={"es": "tests.verifier_plugin:no_such_function"})
    ref = built_at(service, "job-1", "es://cluster/products-v2")
    result = service.shadows.switch(ref, checks=COUNT_ONLY)
    assert result.status == "refused" and "cannot be loaded" in result.detail and "no_such_function" in result.detail
    assert current_id(service) is None and service.shadows.status(ref)["state"] == "BUILT"
    assert not entries(service, AuditKind.ACQUIRED)  # no switch lock was ever taken


@pytest.fixture
def entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A distribution that registers ``tests.verifier_plugin:es_alias`` for kind ``es``."""
    dist = tmp_path / "site" / "acme_search_verifiers-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-search-verifiers\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nes = tests.verifier_plugin:es_alias\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))


def test_a_verifier_registered_as_an_entry_point_is_used(tmp_path: Path, outbox: Outbox, plugin, entry_point) -> None:
    service = settings_service(tmp_path, outbox)
    verifier_plugin.KNOWN.add("products-v2")
    ref = built_at(service, "job-1", "es://cluster/products-v2")
    assert service.shadows.switch(ref, checks=COUNT_ONLY).status == "switched"
    assert_active(service, outbox, ref, verified=True, reason="alias products-v2 resolves")
    assert verifier_plugin.CALLS == ["es://cluster/products-v2"]


def test_the_setting_wins_over_an_entry_point(tmp_path: Path, outbox: Outbox, plugin, entry_point) -> None:
    service = settings_service(tmp_path, outbox, verifiers={"es": "tests.verifier_plugin:exploding"})
    ref = built_at(service, "job-1", "es://cluster/products-v2")
    assert "raised ConnectionError" in service.shadows.switch(ref, checks=COUNT_ONLY).detail
    assert verifier_plugin.CALLS == []



def test_the_cli_shows_the_verification(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from indexgate.cli import main
    from indexgate.store import initialize_store

    monkeypatch.setenv("INDEXGATE_DATA_DIR", str(tmp_path))
    settings = Settings(data_dir=tmp_path)
    initialize_store(settings)
    ref = built_at(Service.from_settings(settings), "job-1", "es://cluster/products-v2")
    runner = CliRunner()
    switched = runner.invoke(main, ["shadows", "switch", ref, "--check", "RECORD_COUNT_VALIDATION"])
    assert switched.exit_code == 0 and "not verified: no verifier for es" in switched.output
    pointer = json.loads(runner.invoke(main, ["index", "current", BRANCH, INDEX, "--json"]).output)
    assert pointer["verification"] == {"kind": "es", "outcome": "no_verifier", "reason": "no verifier for es",
                                       "verified": False}
    status = json.loads(runner.invoke(main, ["shadows", "status", ref, "--json"]).output)
    assert status["verified"] is False and status["verification"]["reason"] == "no verifier for es"
