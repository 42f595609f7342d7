"""Shared fixtures: real brokers (Redis, RabbitMQ, the embedded one), isolated names.

Tests never use a fake broker. Redis and RabbitMQ must be running (``.ci/run`` starts them);
if one is unreachable the tests that need it *fail* with a message saying so, they are not
skipped. Every test gets its own exchange, queue and task-queue names and its own data dir,
so tests on the shared local brokers never see each other's messages.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import pytest

from indexgate.settings import Settings
from indexgate.store import initialize_store
from tests.service_kit import POLICY, MutableClock, Outbox
from indexgate.testing.broker_names import delete_run_names
from indexgate.testing.processes import settings_env, worker_processes  # noqa: F401 (re-exported for tests)

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
BROKERS = {"redis": REDIS_URL, "rabbitmq": AMQP_URL, "embedded": None}
FIXTURES = Path(__file__).parent / "fixtures" / "funnel-events"


def pytest_report_header(config: pytest.Config) -> list[str]:
    mongo = os.environ.get("MONGODB_URL")
    return [
        f"indexgate brokers: redis={REDIS_URL} rabbitmq={AMQP_URL} embedded=filesystem://",
        "MongoDB: live server from MONGODB_URL" if mongo
        else "MongoDB: NOT live - the Mongo adapter's contract tests run against mongomock",
    ]


def require_reachable(url: str) -> None:
    """Fail (not skip) with an actionable message when a broker is down."""
    parsed = urlparse(url)
    try:
        socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 0), timeout=2).close()
    except OSError as exc:
        pytest.fail(f"broker {parsed.scheme}://{parsed.hostname}:{parsed.port} unreachable ({exc}); "
                    "start it (see .ci/run) - these tests need the real broker")


def isolated_settings(data_dir: Path, broker_url: str | None, initialize: bool = True, **overrides) -> Settings:
    """Settings with names no other test uses; the store is initialized (as ``indexgate
    setup`` would) unless ``initialize`` is False."""
    suffix = uuid.uuid4().hex[:10]
    settings = Settings(
        data_dir=data_dir, broker_url=broker_url, store_url=None,
        funnel_exchange=f"test.funnel.{suffix}", intake_queue=f"test.intake.{suffix}",
        task_queue=f"test.tasks.{suffix}", out_exchange=f"test.out.{suffix}", **overrides,
    )
    if initialize:
        initialize_store(settings)
    return settings


@pytest.fixture(params=list(BROKERS))
def broker_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings on each real broker in turn (redis, rabbitmq, embedded) with a SQLite store."""
    url = BROKERS[request.param]
    if url:
        require_reachable(url)
    settings = isolated_settings(tmp_path, url)
    settings.ensure_data_dirs()
    yield settings
    delete_run_names(settings)


@contextmanager
def running_worker(settings: Settings):
    """Celery's own in-process test worker (solo pool) with the intake bootstep, no Docker."""
    from celery.contrib.testing.worker import start_worker

    from indexgate.workers.app import create_app
    from indexgate.workers.runtime import reset

    app = create_app(settings)
    # the AMQP event loop only wakes on its heartbeat timer; a short one lets stop() finish
    # in about a second instead of hitting shutdown_timeout
    app.conf.broker_heartbeat = 2
    with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING", shutdown_timeout=10):
        yield app
    reset(app)


# --- a service on SQLite with a test clock (service-level tests; a module may override) ---


@pytest.fixture
def clock() -> MutableClock:
    return MutableClock()


@pytest.fixture
def outbox() -> Outbox:
    return Outbox()


@pytest.fixture
def store(tmp_path: Path):
    from indexgate.store.sqlite import SqliteStore

    sqlite = SqliteStore(tmp_path / "store.db")
    sqlite.initialize()
    yield sqlite
    sqlite.close()


@pytest.fixture
def service(store, clock, outbox):
    from indexgate.service import Service

    return Service(store, POLICY, clock=clock, notify=outbox)
