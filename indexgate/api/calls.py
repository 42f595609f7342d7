"""Store calls with a deadline: a slow or hung store is "unknown" (503), never a hang.

The store adapters are blocking (sqlite3, pymongo), so every call the API makes runs on a
small thread pool and is awaited for at most ``INDEXGATE_API_STORE_TIMEOUT_S``. Past it the
request gets ``StoreTimeout`` (503) while the thread finishes on its own; a call still
queued behind hung ones is cancelled, so a hung store costs a bounded number of threads and
every request an answer within the deadline. The API's SQLite busy timeout and MongoDB
operation timeout are capped at the same deadline (``api_settings``), so a locked file or a
stalled server frees its thread by then too.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

from indexgate.errors import StoreTimeout, StoreUnavailable
from indexgate.settings import Settings

T = TypeVar("T")
STORE_THREADS = 4


def api_settings(settings: Settings) -> Settings:
    """The API's view of the settings: no store wait may outlast the API's deadline."""
    deadline_s = settings.api_store_timeout_s
    return settings.model_copy(update={"sqlite_busy_timeout_s": min(settings.sqlite_busy_timeout_s, deadline_s),
                                       "mongo_timeout_s": min(settings.mongo_timeout_s, deadline_s)})


class StoreCalls:
    """Runs blocking store calls off the event loop, each awaited for at most ``timeout_s``."""

    def __init__(self, timeout_s: float, threads: int = STORE_THREADS,
                 on_error: Callable[[StoreUnavailable], None] = lambda _exc: None) -> None:
        self.timeout_s = timeout_s
        self.on_error = on_error  # each failed or timed-out call (the API's metrics count them)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="indexgate-api-store")

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        future = self._pool.submit(fn, *args)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except StoreUnavailable as exc:
            self.on_error(exc)
            raise
        except TimeoutError:
            future.cancel()  # still queued behind a hung call: never run it
            self.on_error(StoreTimeout())
            raise StoreTimeout(
                f"the store did not answer within {self.timeout_s:g} s (INDEXGATE_API_STORE_TIMEOUT_S): the answer "
                "is unknown, not allowed; check the store's health (`indexgate locks summary`, its server)") from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
