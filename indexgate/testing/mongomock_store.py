"""The MongoDB adapter over mongomock, for tests on machines without a MongoDB server.

Importing this module registers the ``mongomock://`` store URL with ``open_store``; the
production registry does not know it, so a deployment given ``mongomock://`` refuses it as
an unknown scheme. mongomock proves the adapter's logic, not MongoDB's behaviour (no TTL
expiry, no timeouts, no real concurrency): say so wherever a result rests on it.
"""

from __future__ import annotations

from typing import Any

from indexgate.store import register_scheme
from indexgate.store.mongo import MongoStore


class MongomockStore(MongoStore):
    """One in-memory mongomock client per adapter: it *is* the data, so it is never closed
    and survives a fork as it is."""

    client_holds_data = True

    def _new_client(self) -> Any:
        import mongomock  # the dev extra's; imported only when a test opens such a store

        return mongomock.MongoClient(tz_aware=True)


register_scheme("mongomock", MongomockStore.for_settings)
