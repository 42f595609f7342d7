"""Events published after ``indexgate setup`` and before any worker ever ran are applied
once a worker starts - on Redis (both doors) and on RabbitMQ - and ``intake status`` says
meanwhile that they pile up where nobody reads them.

Without ``setup`` the same publishes would be lost: RabbitMQ drops (or, ``mandatory``,
returns) a message for an exchange with no bound queue, kombu's Redis emulation drops one
for an exchange with no binding. Both controls are shown first.
"""

from __future__ import annotations

from pathlib import Path

import pika.exceptions
import pytest

from tests.conftest import AMQP_URL, REDIS_URL, require_reachable
from tests.interop import recipes
from tests.interop.conftest import Stack, assert_locked, new_job, started

pytestmark = pytest.mark.slow


@pytest.fixture
def fresh(tmp_path: Path, request: pytest.FixtureRequest):
    """A deployment with names nobody has used: no setup, no worker yet."""
    url = {"redis": REDIS_URL, "rabbitmq": AMQP_URL}[request.param]
    require_reachable(url)
    stack = Stack(request.param, url, tmp_path / "data")
    yield stack
    stack.stop()


def alerts(stack: Stack) -> dict[str, dict]:
    return {a["place"]: a for a in stack.cli_json("intake", "status")["alerts"]}


@pytest.mark.parametrize("fresh", ["rabbitmq"], indirect=True)
def test_rabbitmq_without_setup_returns_a_mandatory_publish(fresh: Stack) -> None:
    job, branch = new_job("no-setup")
    event = started(job, branch)
    with pytest.raises(pika.exceptions.UnroutableError):
        recipes.pika_publish(fresh.pika_url, event["type"], *recipes.structured(event), exchange=fresh.exchange)
    assert alerts(fresh)[fresh.queue]["alert"] == "not_declared"


@pytest.mark.parametrize("fresh", ["redis"], indirect=True)
def test_redis_without_setup_says_kombu_publishes_are_dropped(fresh: Stack) -> None:
    assert alerts(fresh)[fresh.exchange]["alert"] == "not_declared"


@pytest.mark.parametrize("fresh", ["redis", "rabbitmq"], indirect=True)
def test_published_after_setup_before_any_worker_is_applied_once_one_starts(fresh: Stack) -> None:
    fresh.setup()
    fresh.setup()  # idempotent
    assert fresh.exchange not in alerts(fresh) and fresh.queue not in alerts(fresh)
    sent = []
    clients = [recipes.kombu_publish] + ([recipes.redis_xadd] if fresh.broker == "redis" else [recipes.pika_publish])
    for client in clients:
        for mode in ("structured", "binary"):
            job, branch = new_job(f"early-{client.__name__}-{mode}")
            event = started(job, branch)
            where = {"stream": fresh.stream} if client is recipes.redis_xadd else {"exchange": fresh.exchange}
            url = fresh.pika_url if client is recipes.pika_publish else fresh.url
            client(url, event["type"], *getattr(recipes, mode)(event), **where)
            sent.append((branch, job))
    piling = alerts(fresh)
    assert sum(a["waiting"] for a in piling.values() if a["alert"] == "no_reader") == len(sent), piling
    assert all(not fresh.locks_of(branch) for branch, _job in sent)  # no worker yet: nothing applied
    fresh.start_worker()
    for branch, job in sent:
        assert_locked(fresh, branch, job)
    assert not alerts(fresh), "once a worker reads, nothing piles up"
