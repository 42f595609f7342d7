"""Intake transports: one protocol (``base.IntakeTransport``), one module per broker kind,
chosen by URL like ``indexgate.store.open_store``.

- no broker URL (``filesystem://``): ``embedded.EmbeddedTransport``, the embedded default
- ``redis://`` / ``rediss://``: ``redis.RedisTransport`` (intake stream, kombu door)
- ``amqp://`` / ``amqps://`` / ``pyamqp://``: ``amqp.AmqpTransport`` (RabbitMQ)
"""

from __future__ import annotations

from urllib.parse import urlparse

from kombu import Connection
from kombu.utils.url import maybe_sanitize_url

from indexgate.errors import ConfigError
from indexgate.events.brokers.base import Acks, Alert, Backlog, IntakeMode, IntakeTransport
from indexgate.settings import Settings

SCHEMES = {"filesystem": "embedded", "redis": "redis", "rediss": "redis", "amqp": "amqp", "amqps": "amqp",
           "pyamqp": "amqp"}


def transport_for(settings: Settings, connection: Connection | None = None) -> IntakeTransport:
    """The transport of ``settings.resolved_broker_url``; connects lazily. ``connection``:
    a kombu connection to publish on instead of its own (a caller with special options)."""
    url = settings.resolved_broker_url
    kind = SCHEMES.get(urlparse(url).scheme)
    if kind == "embedded":
        from indexgate.events.brokers.embedded import EmbeddedTransport

        return EmbeddedTransport(settings, connection)
    if kind == "redis":
        from indexgate.events.brokers.redis import RedisTransport

        return RedisTransport(settings, connection)
    if kind == "amqp":
        from indexgate.events.brokers.amqp import AmqpTransport

        return AmqpTransport(settings, connection)
    raise ConfigError(f"broker URL {maybe_sanitize_url(url)!r} has an unknown scheme; use redis://..., "
                      "amqp://... or leave INDEXGATE_BROKER_URL unset for the embedded broker")


__all__ = ["Acks", "Alert", "Backlog", "IntakeMode", "IntakeTransport", "transport_for"]
