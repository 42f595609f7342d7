"""Configuration: one explicit pydantic-settings object, read from ``INDEXGATE_*``.

Every field has a default that runs on a fresh machine with no servers: the broker is
kombu's ``filesystem://`` transport and the store is SQLite, both under ``data_dir``.

Entry points (worker, beat, CLI, API) read it with ``Settings.from_env()``, which fails
closed: an ``INDEXGATE_*`` variable that names no setting (a typo such as
``INDEXGATE_STORE_ULR``) or a value that does not parse stops them with a ``ConfigError``
naming the variable, instead of silently running on a default store.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Literal, Mapping
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from indexgate.errors import ConfigError

ENV_PREFIX = "INDEXGATE_"
TASK_TIME_LIMIT_S = 300  # Celery's hard time limit for every task (workers.app); the soft one is 60 s less


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "indexgate"


class Settings(BaseSettings):
    """All knobs of indexgate; ``Settings()`` reads the environment."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where the embedded broker and the SQLite store keep their files.",
    )
    broker_url: str | None = Field(
        None,
        description="Celery/kombu broker URL; empty = embedded filesystem:// broker under "
        "data_dir. redis://host:6379/0 and amqp://user:pw@host:5672// also work.",
    )
    store_url: str | None = Field(
        None,
        description="Store URL; empty = sqlite:///<data_dir>/indexgate.db. "
        "mongodb://host:27017/indexgate for MongoDB.",
    )
    funnel_exchange: str = Field("funnel.events", description="Topic exchange the funnel publishes to.")
    intake_queue: str = Field("indexgate.funnel", description="Durable queue bound to funnel_exchange.")
    task_queue: str = Field("indexgate.tasks", description="Queue of indexgate's own Celery tasks.")
    out_exchange: str = Field("indexgate.events", description="Topic exchange for outgoing events.")
    event_source: str = Field("indexgate", description="CloudEvents `source` of outgoing events.")
    source_allowlist: list[str] = Field(
        default_factory=list,
        description="If set, events from other `source`s are dead-lettered (forged-source guard).",
    )
    max_event_bytes: int = Field(
        1_048_576, description="Larger message bodies are dead-lettered unparsed (size limit)."
    )
    max_headers: int = Field(
        100, ge=1, description="A message with more headers is dead-lettered (a CloudEvent in binary mode needs "
        "about ten, tracing a few more)."
    )
    max_header_bytes: int = Field(
        8192, ge=64, description="A message with a larger header (name + value, UTF-8 bytes) is dead-lettered "
        "(8 KiB: the W3C baggage limit)."
    )
    default_ttl_s: float = Field(14_400, description="Lock TTL when `started` gives none (4 h).")
    max_ttl_s: float = Field(
        86_400, description="Upper bound for TTL, also for ETA-driven extensions (24 h)."
    )
    default_heartbeat_interval_s: float = Field(
        120, description="Heartbeat interval when `started` gives none."
    )
    missed_heartbeats: int = Field(
        3, description="A lock is dead after this many intervals without a heartbeat."
    )
    ttl_sweep_interval_s: float = Field(300, description="Beat: TTL cleanup period.")
    heartbeat_sweep_interval_s: float = Field(30, description="Beat: heartbeat cleanup period.")
    health_sweep_interval_s: float = Field(60, description="Beat: health changes (healthy, warning, critical) period.")
    outbox_relay_interval_s: float = Field(
        10, description="Beat: re-publish outgoing events a crash left unsent."
    )
    beat_lease_interval_s: float = Field(
        10, gt=0, le=300, description="Beat: the lease holder renews every this many seconds, a waiting beat tries "
        "every half of it; the lease lasts twice it, so a dead holder is replaced within 2.5 x this.",
    )
    switch_strategy: Literal["pointer", "filesystem"] = Field(
        "pointer", description="pointer: the swap is one store write; filesystem: also an atomic symlink swap."
    )
    index_links_dir: Path | None = Field(
        None, description="filesystem strategy: where <branch>/<index_type>/current links live (default data_dir/indexes)."
    )
    switch_lock_ttl_s: float = Field(60, description="TTL of the short switch lock.")
    switch_lock_heartbeat_interval_s: float = Field(
        2, description="A crashed switch's lock and claim die after missed_heartbeats x this."
    )
    max_shrink_fraction: float = Field(
        0.5, description="SIZE_COMPARISON fails when the new index is smaller by more than this fraction."
    )
    auto_switch: bool = Field(False, description="Switch a shadow in as soon as its build completes.")
    default_index_type: str = Field("SEARCH_INDEX", description="index_type when `started` gives none.")
    job_retention_s: float = Field(
        7 * 86_400, description="How long finished jobs are remembered (duplicate guard)."
    )
    max_finished_jobs: int = Field(
        50, description="At most this many finished jobs are remembered per branch (newest first): every "
        "check and write reads them, so the bound keeps both fast. Exact duplicates are caught by the "
        "event inbox regardless.",
    )
    max_early_ends: int = Field(
        1000, ge=1, description="At most this many job ends that arrived before their job's started are "
        "remembered (store-wide, newest first, each for at most job_retention_s), so the late started takes "
        "no lock.",
    )
    max_clock_skew_s: float = Field(
        600, ge=0, description="A funnel clock off by up to this many seconds either way keeps its locks "
        "alive: each job's clock offset is estimated from its events and corrected (see indexgate.skew).",
    )
    verify_timeout_s: float = Field(
        2.0, gt=0, description="Deadline of the whole post-switch verification, any kind (http(s): HEAD, "
        "GET and redirects together); a late answer is a failed verification (rollback). It runs inside the "
        "switch's blackout; twice it must stay below the switch claim window.",
    )
    verifiers: dict[str, Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")]] = Field(
        default_factory=dict, description='Post-switch verifiers per location kind, JSON {"es": '
        '"package.module:callable"}; they win over the indexgate.verifiers entry points and the built-ins.',
    )
    redis_visibility_timeout_s: float = Field(
        600, description="Redis broker: a crashed worker's unacked messages come back after this. Keep it "
        "above task_time_limit (300 s) and store_retry_max_s, or running/waiting tasks are delivered twice "
        "(harmless - events are idempotent - but wasted work).",
    )
    store_retry_max_s: float = Field(
        60, description="Longest backoff between retries while the store is unavailable."
    )
    sqlite_busy_timeout_s: float = Field(
        5, description="How long SQLite waits on another process's write lock."
    )
    mongo_timeout_s: float = Field(
        10, gt=0, description="MongoDB: the longest one store operation may take, retries included (pymongo "
        "timeoutMS), unless the store URL sets timeoutMS or socketTimeoutMS: a server that stalls mid-operation "
        "is StoreUnavailable, not a hung worker or API thread. The API caps it at api_store_timeout_s.",
    )
    task_events: bool = Field(
        False, description="Send Celery task events from the start (Flower also enables them at runtime); "
        "they cost about a third of the worker's event throughput.",
    )
    shutdown_timeout_s: float = Field(
        30, gt=0, le=TASK_TIME_LIMIT_S, description="Worker: how long a warm shutdown (SIGTERM, Ctrl+C) may wait "
        "for running tasks before it turns cold (workers.shutdown): tasks still running are cut off and go back "
        "to the broker (acks_late), to be applied by the next worker. Keep the orchestrator's grace period "
        "(compose stop_grace_period) above it. At most the task time limit (300 s).",
    )
    intake_prefetch: int = Field(64, description="RabbitMQ / embedded broker: unacked funnel messages per worker.")
    intake_group: str = Field("indexgate", description="Redis: the consumer group reading the intake stream.")
    intake_batch_max: int = Field(
        100, description="Redis: at most this many stream entries per hand-off task (fewer when fewer wait)."
    )
    intake_waiting_tasks_max: int = Field(
        1, description="Redis: a worker reads no more entries while this many hand-off tasks wait in the task "
        "queue; new entries gather in the stream meanwhile and go out as one bigger batch.",
    )
    intake_linger_s: float = Field(
        0.002, description="Redis: after reading fewer than intake_batch_max entries, wait this long for more "
        "before handing them off (0 = never): under load several events share one task.",
    )
    intake_claim_idle_s: float = Field(
        60, description="Redis: an entry unacked for this long (its worker died, its hand-off task was "
        "lost in a Redis crash) is handed off again. Keep it above the time a batch takes to apply.",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Worker, beat and API logs: text lines, or json (one JSON object per line with the "
        "event id, type, branch and job id where known).",
    )
    worker_metrics_dir: Path | None = Field(
        None, description="indexgate serve: the folder the worker's prometheus_client multiprocess files are in "
        "(the worker's PROMETHEUS_MULTIPROC_DIR, on this machine or a shared volume); /metrics merges every *.db "
        "file below it. Unset: /metrics has no worker-side series.",
    )
    api_token: SecretStr | None = Field(
        None, min_length=1, description="HTTP API: when set, every endpoint but /healthz, /readyz and /metrics "
        "requires it as a bearer token (401 otherwise). Set but empty refuses to start (an unset shell variable "
        "must not turn auth off).",
    )
    api_store_timeout_s: float = Field(
        1.0, gt=0, description="HTTP API: a store call that takes longer is answered 503 (unknown), never "
        "allowed; the API's SQLite busy timeout is capped at it too.",
    )
    rabbitmq_consumer_timeout_s: float = Field(
        1800, gt=0, description="The RabbitMQ server's consumer_timeout (its default: 30 min): a delivery held "
        "unacked this long is requeued. Set it to the server's value: the inbox retention must outlive it.",
    )
    inbox_retention_s: float = Field(
        86_400, description="Retention: how long an applied event's inbox key is kept (the exact-duplicate "
        "guard). Must outlive every redelivery path (inbox_retention_floor_s; shorter refuses to start).",
    )
    audit_retention_s: float = Field(
        30 * 86_400, description="Retention: published audit entries older than this are pruned (unpublished "
        "ones - the outbox - never).",
    )
    dead_letter_retention_s: float = Field(30 * 86_400, description="Retention: dead letters older than this are pruned.")
    build_retention_s: float = Field(
        7 * 86_400, description="Finished shadow builds (FAILED, CANCELLED, CLEANUP that is no kept backup) are "
        "forgotten this long after they finished (by the shadow sweep).",
    )
    retention_interval_s: float = Field(3600, description="Beat: retention (inbox, audit, dead letters) period.")
    max_resource_types_per_event: int = Field(
        256, ge=1, description="A `started` naming more resource types is dead-lettered (the reason names this limit).",
    )
    max_locks_per_branch: int = Field(
        256, ge=1, description="Live locks one branch may hold; an acquire beyond is refused (lock.refused names "
        "this limit). Every check and write reads the branch's locks.",
    )
    max_builds_per_index: int = Field(
        20, ge=1, description="Builds one (branch, index_type) keeps: the oldest finished ones are forgotten to "
        "make room; a build that would pass it with nothing to forget is refused (shadow.refused names it).",
    )

    @model_validator(mode="after")
    def _retention_outlives_redelivery(self) -> "Settings":
        """Refuse an inbox retention that a redelivered event could outlive: it would be
        applied twice. ``ConfigError`` (not a ``ValueError``) passes through pydantic as is."""
        floor = self.inbox_retention_floor_s
        if self.inbox_retention_s < floor:
            raise ConfigError(
                f"INDEXGATE_INBOX_RETENTION_S={self.inbox_retention_s:g} is shorter than the longest an applied event "
                f"can be delivered again ({floor:g} s: {self._floor_terms()}); an event redelivered after its inbox "
                f"key was pruned would be applied twice. Set it to at least {floor:g}")
        if self.retention_interval_s < self.store_retry_max_s + TASK_TIME_LIMIT_S:
            raise ConfigError(
                f"INDEXGATE_RETENTION_INTERVAL_S={self.retention_interval_s:g} is shorter than a retried batch may "
                f"take after a store outage (INDEXGATE_STORE_RETRY_MAX_S {self.store_retry_max_s:g} + task time "
                f"limit {TASK_TIME_LIMIT_S}); set it to at least {self.store_retry_max_s + TASK_TIME_LIMIT_S:g}")
        return self

    @property
    def redelivery_horizon_s(self) -> float:
        """The longest an applied event may come back while the store answers: the slowest
        broker-side redelivery (Redis visibility timeout, RabbitMQ consumer_timeout, intake
        stream claim), plus a task running to its time limit, plus one retry backoff."""
        slowest = max(self.redis_visibility_timeout_s, self.rabbitmq_consumer_timeout_s, self.intake_claim_idle_s)
        return slowest + TASK_TIME_LIMIT_S + self.store_retry_max_s

    @property
    def inbox_retention_floor_s(self) -> float:
        """The shortest inbox retention allowed: the redelivery horizon, and two retention
        intervals plus a task time limit (the run after a store outage prunes no inbox keys,
        see ``indexgate.retention``)."""
        return max(self.redelivery_horizon_s, 2 * self.retention_interval_s + TASK_TIME_LIMIT_S)

    def _floor_terms(self) -> str:
        return (f"max(Redis visibility timeout {self.redis_visibility_timeout_s:g}, RabbitMQ consumer_timeout "
                f"{self.rabbitmq_consumer_timeout_s:g}, intake claim idle {self.intake_claim_idle_s:g}) + task time "
                f"limit {TASK_TIME_LIMIT_S} + store retry backoff {self.store_retry_max_s:g}, and at least 2 x "
                f"INDEXGATE_RETENTION_INTERVAL_S {self.retention_interval_s:g} + {TASK_TIME_LIMIT_S}")

    @model_validator(mode="after")
    def _verification_fits_the_switch_claim(self) -> "Settings":
        """The verification runs inside the unrefreshed switch lock, bounded by this deadline; with the
        swap and a rollback around it, it must end well before the lock dies."""
        claim_s = self.missed_heartbeats * self.switch_lock_heartbeat_interval_s
        if 2 * self.verify_timeout_s >= claim_s:
            raise ValueError(
                f"INDEXGATE_VERIFY_TIMEOUT_S={self.verify_timeout_s:g} is too long: twice it must stay below the switch "
                f"claim window (INDEXGATE_MISSED_HEARTBEATS x INDEXGATE_SWITCH_LOCK_HEARTBEAT_INTERVAL_S = {claim_s:g} "
                "s), or the switch lock could die during verification")
        return self

    @classmethod
    def from_env(cls) -> "Settings":
        """The settings of this process's environment, or ``ConfigError`` saying which
        variable is wrong: unknown ``INDEXGATE_*`` names and unparsable values refuse, and so
        does a Celery-level broker (``CELERY_BROKER_URL``, ``celery -b``) disagreeing with
        ``INDEXGATE_BROKER_URL``."""
        check_environment(os.environ)
        try:
            settings = cls()
        except ValidationError as exc:
            raise ConfigError(_readable(exc)) from None
        check_celery_broker(settings, os.environ)
        return settings

    @classmethod
    def env_names(cls) -> list[str]:
        """Every ``INDEXGATE_*`` variable this version understands."""
        return sorted(ENV_PREFIX + name.upper() for name in cls.model_fields)

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{self.data_dir / 'indexgate.db'}"

    def ensure_data_dirs(self) -> None:
        """Create data_dir; called before connecting (the embedded broker's own folders are
        made by its transport, ``events.brokers.embedded``)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse ``INDEXGATE_*`` variables that name no setting, naming the closest known one."""
    known = Settings.env_names()
    unknown = sorted(name for name in environ if name.upper().startswith(ENV_PREFIX) and name.upper() not in known)
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.6)
            hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
        raise ConfigError(f"unknown setting(s) in the environment: {', '.join(hints)}; indexgate refuses to start "
                          "rather than run on a default it was not meant to use (known settings: see the README's "
                          "Configuration table)")


def check_celery_broker(settings: Settings, environ: Mapping[str, str]) -> None:
    """``celery -b URL`` and ``CELERY_BROKER_URL`` override a Celery app's broker URL but not
    its transport class and options: a worker would run half on one broker, half configured
    for another. One source of truth: a Celery-level broker must agree with indexgate's."""
    celery_url = environ.get("CELERY_BROKER_URL")
    if celery_url and celery_url != settings.resolved_broker_url:
        raise ConfigError(
            f"the broker is set twice and the two disagree: CELERY_BROKER_URL (or `celery -b`) is "
            f"{sanitized_url(celery_url)!r} but indexgate's broker is {sanitized_url(settings.resolved_broker_url)!r} "
            f"(INDEXGATE_BROKER_URL{'' if settings.broker_url else ', unset: the embedded broker'}); set "
            "INDEXGATE_BROKER_URL and drop the other")


def sanitized_url(url: str) -> str:
    """``url`` with its password replaced by ``**``, for messages."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":**@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _readable(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        field = ".".join(str(part) for part in err["loc"])
        if not field:  # a rule over several settings: its message names them
            problems.append(str(err["msg"]).removeprefix("Value error, "))
            continue
        problems.append(f"{ENV_PREFIX}{field.upper()}: {err['msg']}" + (f" (got {err['input']!r})" if "input" in err else ""))
    return "invalid setting(s): " + "; ".join(problems)
