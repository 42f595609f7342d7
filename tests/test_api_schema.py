"""Schemathesis against a running ``indexgate serve``: every operation of ``/openapi.json``
is fuzzed (valid and invalid parameters) with its default checks - no 5xx, every status
declared, every body matching its schema, the token enforced where the schema says so.

The server runs with a token and over a seeded store (live and dead locks, a shadow build,
a dead letter), so the schemas are checked on real answers, not only on empty lists. The
change stream (``/v1/changes``, Server-Sent Events that never end) is tested by
``tests/test_client.py`` instead.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from indexgate.api import create_api
from indexgate.events.decode import RawMessage
from indexgate.events.intake import ingest
from indexgate.locks import AcquireRequest
from indexgate.outcomes import Origin
from indexgate.service import Service
from indexgate.settings import Settings
from indexgate.testing.api import api_process
from indexgate.testing.broker_names import delete_run_names
from tests.conftest import REDIS_URL, isolated_settings, require_reachable
from tests.test_api import _eventually_ready, send, start

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _seed(service: Service, settings) -> None:
    start(service, "job-1", ["object_type"], branch="main")
    send(service, "com.oms.indexing.progress", {"job_id": "job-1", "progress_percent": 10,
                                                 "estimated_remaining_s": 900}, "p-1")
    start(service, "wide", [], branch="feature/x")
    service.acquire("dead", AcquireRequest(job_id="gone", holder="h", resource_types=("link_type",), reason="r",
                                           heartbeat_interval_s=0.001), Origin(actor="test"))
    send(service, "com.oms.indexing.started", {"job_id": "shadow-1", "branch": "main", "indexing_mode": "shadow",
                                                "resource_types": ["object_type"]}, "s-1")
    assert ingest(service, settings, RawMessage.build({}, "application/cloudevents+json", b"{nope")).status \
        == "dead_lettered"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    require_reachable(REDIS_URL)
    folder: Path = tmp_path_factory.mktemp("fuzz")
    settings = isolated_settings(folder, REDIS_URL, api_token=TOKEN)
    service = Service.from_settings(settings)
    _seed(service, settings)
    service.store.close()
    try:
        with api_process(settings) as url:
            assert _eventually_ready(url).status_code == 200
            yield url
    finally:
        delete_run_names(settings)


def _served_schema() -> dict:
    """The schema ``indexgate serve`` serves, built without I/O (``create_api`` connects to
    nothing); ``test_the_served_schema_is_the_fuzzed_one`` proves the server serves this."""
    return create_api(Settings(data_dir=Path("/nonexistent/indexgate-schema-only"))).openapi()


# schemathesis sends the token itself (so its negative phase can also leave it out and
# expect 401); FastAPI ignores unknown query parameters, as documented, so none are sent
CONFIG = SchemathesisConfig.from_dict({"generation": {"allow-extra-parameters": False},
                                       "auth": {"openapi": {"HTTPBearer": {"bearer": TOKEN}}}})
schema = schemathesis.openapi.from_dict(_served_schema(), config=CONFIG).exclude(path="/v1/changes")


def test_the_served_schema_is_the_fuzzed_one(served: str) -> None:
    assert httpx.get(f"{served}/openapi.json", headers=AUTH, timeout=10).json() == _served_schema()


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_to_its_schema(case, served: str) -> None:
    case.call_and_validate(base_url=served)


def test_the_fuzzer_reached_real_answers(served: str) -> None:
    """The fuzzer's cases, drawn here for every operation in both generation modes (so this
    test stands alone, in any order): every operation answered 200 at least once (the token
    was sent and the seeded data came back; random ids only find nothing: 404), and every
    protected one was refused too."""
    seen: dict[str, set[int]] = {}
    for operation in (op.ok() for op in schema.get_all_operations()):
        for mode in GenerationMode:
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def call(case) -> None:
                seen.setdefault(operation.label, set()).add(case.call(base_url=served).status_code)

            try:
                call()
            except Unsatisfiable:  # nothing to make invalid (an operation without parameters)
                assert mode is GenerationMode.NEGATIVE, operation.label
    assert sorted(seen) == sorted(op.ok().label for op in schema.get_all_operations()), seen
    for label, statuses in seen.items():
        assert (404 if "{" in label else 200) in statuses, (label, statuses)
        if label not in ("GET /healthz", "GET /readyz"):
            assert 401 in statuses, (label, statuses)
