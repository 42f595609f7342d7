"""One look at everything operators watch, read when asked: for ``/metrics`` and the board.

The store part (locks with their health, shadow builds, active pointers, recent dead
letters) is one blocking read run through the API's store deadline; the broker part (the
intake backlog, from the broker transport's own ``backlog()``) runs on a thread with the
same deadline. Either side failing is reported as down (``store_error`` /
``broker_error``), never as zeros that look healthy.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from datetime import datetime

from indexgate.api.calls import StoreCalls
from indexgate.api.context import STORE_ERRORS
from indexgate.clock import utcnow
from indexgate.events.brokers import Backlog, IntakeTransport, transport_for
from indexgate.locks import LockView
from indexgate.leases import BEAT
from indexgate.schemas.records import DeadLetter, Lease
from indexgate.schemas.shadows import IndexState, ShadowBuild, ShadowState
from indexgate.service import Service
from indexgate.settings import Settings

RECENT_DEAD_LETTERS = 20


@dataclass
class StoreView:
    locks: list[LockView]
    builds: list[tuple[ShadowBuild, ShadowState]]
    indexes: list[IndexState]
    dead_letters: list[DeadLetter]
    beat_lease: Lease | None = None


@dataclass
class Overview:
    at: datetime
    store: StoreView | None = None
    store_error: str | None = None
    backlog: Backlog | None = None
    broker_error: str | None = None


def read_store(service: Service) -> StoreView:
    return StoreView(locks=service.list_locks(), builds=service.shadows.builds(), indexes=service.store.indexes(),
                     dead_letters=service.store.dead_letters(RECENT_DEAD_LETTERS),
                     beat_lease=service.leases.current(BEAT))


class Watch:
    """The API's broker transport for the backlog (its own connection, opened on first use,
    one reader at a time) and the reads of an overview."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._transport: IntakeTransport | None = None
        self._lock = threading.Lock()

    def backlog(self) -> Backlog:
        with self._lock:
            if self._transport is None:
                self._transport = transport_for(self.settings)
            try:
                return self._transport.backlog()
            except Exception:
                self._transport.close()  # a fresh connection next time
                raise

    async def overview(self, service: Service, calls: StoreCalls) -> Overview:
        view = Overview(at=utcnow())
        try:
            view.store = await calls.run(read_store, service)
        except STORE_ERRORS as exc:
            view.store_error = str(exc)
        try:
            view.backlog = await asyncio.wait_for(asyncio.to_thread(self.backlog), calls.timeout_s * 2)
        except TimeoutError:
            view.broker_error = f"the broker did not answer within {calls.timeout_s * 2:g} s"
        except Exception as exc:  # unreachable, refused: the board and /metrics say so
            view.broker_error = f"{type(exc).__name__}: {exc}"
        return view

    def close(self) -> None:
        with self._lock:
            if self._transport is not None:
                self._transport.close()
                self._transport = None
