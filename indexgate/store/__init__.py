"""Stores: one protocol (``base.Store``), one adapter per backend, chosen by URL.

- ``sqlite:///path/to/file.db``  embedded default (``sqlite.SqliteStore``)
- ``mongodb://...`` / ``mongodb+srv://...``  production (``mongo.MongoStore``, pymongo)
- ``mongomock://``  the Mongo adapter over mongomock, for tests without a server
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from indexgate.errors import ConfigError
from indexgate.settings import Settings
from indexgate.store.base import Store


def open_store(settings: Settings) -> Store:
    """Build the adapter for ``settings.resolved_store_url``; connects lazily."""
    url = settings.resolved_store_url
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        from indexgate.store.sqlite import SqliteStore

        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
        if not path:
            raise ConfigError(f"store URL {url!r}: use sqlite:///absolute/or/relative/path.db")
        return SqliteStore(Path(path), busy_timeout_s=settings.sqlite_busy_timeout_s)
    if scheme in {"mongodb", "mongodb+srv", "mongomock"}:
        from indexgate.store.mongo import MongoStore

        return MongoStore.from_url(url, ttl_s={"inbox": settings.inbox_retention_s, "audit": settings.audit_retention_s,
                                               "dead_letters": settings.dead_letter_retention_s})
    raise ConfigError(
        f"store URL {url!r} has an unknown scheme {scheme!r}; use sqlite:///..., mongodb://... "
        "(or mongomock:// in tests)"
    )


def initialize_store(settings: Settings) -> str:
    """Initialize the configured store (``indexgate setup``, a worker's start); returns its
    URL for messages. Idempotent."""
    store = open_store(settings)
    try:
        store.initialize()
    finally:
        store.close()
    return settings.resolved_store_url


__all__ = ["Store", "initialize_store", "open_store"]
