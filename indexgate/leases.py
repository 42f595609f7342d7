"""Leases: one holder at a time for a singleton role (beat), kept in indexgate's own store.

A lease is a named row with a holder, a fencing token and an expiry. The holder renews it
every interval; while it is alive nobody else can take it; once it has expired the next
taker gets it with the token raised by one. Work started under a lease carries its token
(``Fence``), and checks it before each change it makes: work sent by a holder that has
lost the lease meanwhile (paused, cut off, SIGKILLed with tasks still queued) changes
nothing. The rule (``claim`` / ``released``) is pure; the store only compares and swaps
(``Store.swap_lease``), so both adapters share it.

Times are the takers' wall clocks: beat hosts need synchronized clocks (NTP); a host whose
clock runs ahead by ``d`` sees a lease expire ``d`` early.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from indexgate.clock import Clock, utcnow
from indexgate.errors import Fenced
from indexgate.schemas.records import Lease
from indexgate.store import Store

BEAT = "beat"  # the lease every beat competes for
T = TypeVar("T")


def claim(current: Lease | None, name: str, holder: str, ttl_s: float, now: datetime) -> Lease | None:
    """The lease after ``holder`` asks for it at ``now``: renewed (same token) while it holds
    a live lease, taken (token + 1) when there is none or it expired, None while someone
    else's is alive. Retaking one's own expired lease raises the token too: work sent before
    the gap may still be queued, and must not count as current."""
    expires = now + timedelta(seconds=ttl_s)
    if current is None:
        return Lease(name=name, holder=holder, token=1, expires_at=expires, renewed_at=now)
    if current.alive(now):
        if current.holder != holder:
            return None
        return current.model_copy(update={"expires_at": expires, "renewed_at": now})
    return Lease(name=name, holder=holder, token=current.token + 1, expires_at=expires, renewed_at=now)


def released(current: Lease | None, holder: str, now: datetime) -> Lease | None:
    """The lease after its holder gives it up: expired at once, token kept (the next taker
    raises it); None when ``holder`` does not hold a live one."""
    if current is None or current.holder != holder or not current.alive(now):
        return None
    return current.model_copy(update={"expires_at": now, "renewed_at": now})


class Leases:
    """Taking, renewing, giving up and reading leases over a store."""

    def __init__(self, store: Store, clock: Clock = utcnow) -> None:
        self.store = store
        self.clock = clock

    def take(self, name: str, holder: str, ttl_s: float) -> Lease | None:
        """Take or renew ``name`` for ``ttl_s``; the lease held now, or None if another holds
        it (or took it in the same instant). Raises ``StoreUnavailable`` when the store does
        not answer: the caller must then assume it holds nothing once its lease ran out."""
        current = self.store.lease(name)
        wanted = claim(current, name, holder, ttl_s, self.clock())
        if wanted is None or not self.store.swap_lease(current, wanted):
            return None
        return wanted

    def give_up(self, name: str, holder: str) -> bool:
        """Expire ``holder``'s lease now, so a waiting taker need not wait out its TTL."""
        current = self.store.lease(name)
        wanted = released(current, holder, self.clock())
        return wanted is not None and self.store.swap_lease(current, wanted)

    def current(self, name: str) -> Lease | None:
        return self.store.lease(name)

    def fence(self, name: str, token: int | None) -> "Fence":
        """A fence for work sent under ``token``; no token (a sweep run by hand, or sent by a
        scheduler that holds no lease) is not fenced."""
        return Fence(self, name, token)


@dataclass(frozen=True)
class Fence:
    leases: Leases | None
    name: str
    token: int | None

    def check(self) -> None:
        """Raise ``Fenced`` unless ``token`` is still the lease's current one."""
        if self.token is None or self.leases is None:
            return
        current = self.leases.current(self.name)
        if current is None or current.token != self.token:
            now_held = f"token {current.token}, held by {current.holder}" if current else "no lease at all"
            raise Fenced(f"sent under {self.name} lease token {self.token}, which is no longer current ({now_held}): "
                         "changed nothing; the current holder's own run does the work")

    def guard(self, listing: Callable[[], Iterable[T]]) -> Iterator[T]:
        """What ``listing`` returns, one at a time: the fence checked before the listing (a
        fenced-out sweep with nothing to do still says so) and again before each item after the
        first, so a sweep whose lease changed hands stops before its next change."""
        self.check()
        for i, item in enumerate(listing()):
            if i:
                self.check()
            yield item


UNFENCED = Fence(None, BEAT, None)
