"""Time, injected: every domain function takes ``now`` so tests own the clock."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Callable, TypeVar

Clock = Callable[[], datetime]
T = TypeVar("T")


def utcnow() -> datetime:
    """The current instant as an aware UTC datetime."""
    return datetime.now(timezone.utc)


def as_utc(value: datetime) -> datetime:
    """Make ``value`` aware UTC; naive values are taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def poll(predicate: Callable[[], T], timeout_s: float, every_s: float = 0.05) -> T | None:
    """Call ``predicate`` until it returns something truthy (returned) or ``timeout_s``
    passes (None). For the demo, benchmarks and tests that wait on real processes."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(every_s)
