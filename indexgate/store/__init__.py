"""Stores: one protocol (``base.Store``), one adapter per backend, chosen by URL.

- ``sqlite:///path/to/file.db``  embedded default (``sqlite.SqliteStore``)
- ``mongodb://...`` / ``mongodb+srv://...``  production (``mongo.MongoStore``, pymongo)

``open_store`` knows a scheme only if it was registered (``register_scheme``); test tooling
registers its own (``indexgate.testing.mongomock_store`` adds ``mongomock://``), so
production refuses a test scheme like any unknown one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from indexgate.errors import ConfigError
from indexgate.settings import Settings, sanitized_url
from indexgate.store.base import Store

Opener = Callable[[str, Settings], Store]  # (store URL, settings) -> an adapter that has not connected yet
_OPENERS: dict[str, Opener] = {}


def register_scheme(scheme: str, opener: Opener) -> None:
    """Let ``open_store`` open URLs of ``scheme`` with ``opener``."""
    _OPENERS[scheme] = opener


def _sqlite(url: str, settings: Settings) -> Store:
    from indexgate.store.sqlite import SqliteStore

    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
    if not path:
        raise ConfigError(f"store URL {url!r}: use sqlite:///absolute/or/relative/path.db")
    return SqliteStore(Path(path), busy_timeout_s=settings.sqlite_busy_timeout_s)


def _mongo(url: str, settings: Settings) -> Store:
    from indexgate.store.mongo import MongoStore

    return MongoStore.for_settings(url, settings)


register_scheme("sqlite", _sqlite)
register_scheme("mongodb", _mongo)
register_scheme("mongodb+srv", _mongo)


def open_store(settings: Settings) -> Store:
    """Build the adapter for ``settings.resolved_store_url``; connects lazily."""
    url = settings.resolved_store_url
    scheme = urlparse(url).scheme
    opener = _OPENERS.get(scheme)
    if opener is None:
        raise ConfigError(f"store URL {sanitized_url(url)!r} has an unknown scheme {scheme!r}; use sqlite:///path.db or "
                          "mongodb://host/database")
    return opener(url, settings)


def initialize_store(settings: Settings) -> str:
    """Initialize the configured store (``indexgate setup``, a worker's start); returns its
    URL for messages. Idempotent."""
    store = open_store(settings)
    try:
        store.initialize()
    finally:
        store.close()
    return settings.resolved_store_url


__all__ = ["Store", "initialize_store", "open_store", "register_scheme"]
