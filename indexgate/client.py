"""``indexgate.client``: the OMS asks indexgate over HTTP. Needs pydantic and httpx only
(the bare ``pip install indexgate``): no Celery, kombu, redis or pymongo.

::

    from indexgate.client import Gate

    gate = Gate("http://indexgate:8700", token=os.environ.get("INDEXGATE_API_TOKEN"), timeout_s=0.5)
    decision = gate.check("main", "object_type")          # -> indexgate.permissions.Decision
    if not decision.allowed:
        raise Locked(decision.message)                    # holder, progress, ETA, retry_after_s

Fail closed: ``check`` returns a ``Decision`` only for a 200 whose body is a decision about
exactly what was asked; a timeout, a refused or dropped connection, a 5xx (503: the store
cannot answer), a 401, a 4xx or a malformed answer raise a ``GateError`` (``indexgate.errors``)
- never "allowed".

Waiting out a short denial: ``max_wait_s`` (per Gate, or per call) re-asks after
``retry_after_s`` while that fits in the budget - a switch blackout (milliseconds) is
waited out, a four-hour build is not.

L1 cache (off by default): ``Gate(..., max_staleness_ms=N)`` keeps *allowed* answers per
``(branch, resource_type, action)`` for at most N ms, measured from when the request was
sent, and drops a branch's answers as soon as the server streams a change of that branch
(``GET /v1/changes``: the server consumes the outgoing ``indexgate.events`` exchange). The
cache answers only while that stream is up and heard from (a ``ready``, then a ping at least
every few seconds); when it is down, cut or silent, every check goes to the server. A change
is missed for at most the time its announcement takes to arrive (measured in
bench/RESULTS.md), and never for longer than N ms.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urlencode

import httpx
from pydantic import ValidationError

from indexgate.errors import GateBadRequest, GateError, GateMalformedAnswer, GateUnauthorized, GateUnavailable
from indexgate.permissions import Decision, whole_branch

__all__ = ["Decision", "Gate", "GateError", "GateStats"]

CHECK_PATH = "/v1/check"
CHANGES_PATH = "/v1/changes"
STREAM_READ_S = 10.0  # the server pings every 2 s; a stream silent this long is reopened
SILENCE_FACTOR = 2.5  # the cache answers only if the stream was heard within this many ping periods
MAX_ENTRIES = 10_000  # cached answers (and tracked branches) before the cache starts over
RECONNECT_MAX_S = 5.0


@dataclass
class GateStats:
    """What a Gate did: answers from the server and from the cache, invalidations heard."""

    server_checks: int = 0
    cache_hits: int = 0
    invalidations: int = 0
    streams_ready: int = 0
    waits: int = 0


class Gate:
    """A client of one indexgate API. Thread-safe; create it after a fork (or it starts over)."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 1.0, *, max_wait_s: float = 0.0,
                 max_staleness_ms: float | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_wait_s = max_wait_s
        self.max_staleness_ms = max_staleness_ms
        self.stats = GateStats()
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._start()

    def _start(self) -> None:
        self._pid = os.getpid()
        self._http = httpx.Client(base_url=self.url, headers=self._headers, timeout=self.timeout_s)
        self._cache = _Cache(self.max_staleness_ms / 1000) if self.max_staleness_ms else None
        self._stream = _ChangeStream(self.url, self._headers, self._cache, self.stats) if self._cache else None

    @property
    def cache_active(self) -> bool:
        """Whether a check could be answered from the cache right now."""
        return self._cache is not None and self._cache.usable(time.monotonic())

    def check(self, branch: str, resource_type: str | None, action: str = "write", *,
              max_wait_s: float | None = None) -> Decision:
        """May ``action`` on ``resource_type`` (None or ``*``: the whole branch) of ``branch``
        proceed now? Raises ``GateError`` whenever there is no trustworthy answer."""
        budget_s = self.max_wait_s if max_wait_s is None else max_wait_s
        deadline = time.monotonic() + budget_s
        while True:
            decision = self._check_once(branch, resource_type, action)
            wait_s = decision.retry_after_s
            if decision.allowed or wait_s is None or time.monotonic() + wait_s > deadline:
                return decision
            self.stats.waits += 1
            time.sleep(wait_s)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self._http.close()

    def __enter__(self) -> "Gate":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- one answer -----------------------------------------------------------------------

    def _check_once(self, branch: str, resource_type: str | None, action: str) -> Decision:
        if self._pid != os.getpid():  # forked: connections and the stream thread stayed behind
            self._start()
        key = (branch, resource_type, action)
        cache = self._cache
        if cache is not None:
            cached = cache.get(key)
            if cached is not None:
                self.stats.cache_hits += 1
                return cached
            ticket = cache.ticket(branch)
        decision = self._ask(branch, resource_type, action)
        if cache is not None and decision.allowed:
            cache.put(key, decision, ticket)
        return decision

    def _ask(self, branch: str, resource_type: str | None, action: str) -> Decision:
        params = {"branch": branch, "action": action}
        if resource_type is not None:
            params["resource_type"] = resource_type
        where = f"{self.url}{CHECK_PATH}"
        try:  # a ready-made query string: httpx's own params handling costs a quarter of a request
            response = self._http.get(f"{CHECK_PATH}?{urlencode(params)}")
        except httpx.TimeoutException as exc:
            raise GateUnavailable(f"no answer from {where} within {self.timeout_s:g} s ({type(exc).__name__}): "
                                  "unknown, not allowed", url=where) from exc
        except httpx.HTTPError as exc:
            raise GateUnavailable(f"cannot reach {where}: {type(exc).__name__}: {exc}; unknown, not allowed",
                                  url=where) from exc
        self.stats.server_checks += 1
        _raise_for_status(response, where)
        try:
            decision = Decision.model_validate_json(response.content)
        except ValidationError as exc:
            raise GateMalformedAnswer(f"{where} answered 200 with something that is not a decision "
                                      f"({exc.error_count()} problems); not allowed", url=where, status_code=200) from exc
        if (decision.branch, decision.resource_type, decision.action) != (branch, whole_branch(resource_type), action):
            raise GateMalformedAnswer(f"{where} answered about {decision.branch}/{decision.resource_type}/"
                                      f"{decision.action}, not what was asked; not allowed", url=where, status_code=200)
        return decision


def _raise_for_status(response: httpx.Response, where: str) -> None:
    status = response.status_code
    if status == 200:
        return
    detail = _detail(response)
    if status == 401:
        raise GateUnauthorized(f"{where}: 401, the API requires its token (Gate(url, token=...)): {detail}",
                               url=where, status_code=status)
    if status >= 500:
        raise GateUnavailable(f"{where}: {status}, no answer ({detail}): unknown, not allowed", url=where,
                              status_code=status)
    if 400 <= status < 500:
        raise GateBadRequest(f"{where}: {status}, the request was refused: {detail}", url=where, status_code=status)
    raise GateMalformedAnswer(f"{where}: unexpected status {status}; not allowed", url=where, status_code=status)


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", ""))[:500]
    except (ValueError, AttributeError):
        return response.text[:200]


class _Cache:
    """Allowed answers with the time their request was sent; all methods take the lock.

    A ticket (epoch, the branch's generation, send time) is taken before a request: an
    answer is kept only if no invalidation of its branch (and no reset) came in meanwhile,
    so an answer that crossed a change on the wire is never cached."""

    def __init__(self, max_staleness_s: float) -> None:
        self.max_staleness_s = max_staleness_s
        self._lock = threading.Lock()
        self._entries: dict[tuple, tuple[Decision, float]] = {}
        self._generation: dict[str, int] = {}
        self._epoch = 0
        self._live = False
        self._heard_at = 0.0
        self._silence_s = 0.0

    def usable(self, now: float) -> bool:
        return self._live and now - self._heard_at <= self._silence_s

    def get(self, key: tuple) -> Decision | None:
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or not self.usable(now) or now - entry[1] > self.max_staleness_s:
                return None
            return entry[0]

    def ticket(self, branch: str) -> tuple[int, int, float]:
        with self._lock:
            return self._epoch, self._generation.get(branch, 0), time.monotonic()

    def put(self, key: tuple, decision: Decision, ticket: tuple[int, int, float]) -> None:
        epoch, generation, sent_at = ticket
        with self._lock:
            if epoch != self._epoch or generation != self._generation.get(key[0], 0) or not self._live:
                return
            if len(self._entries) >= MAX_ENTRIES:
                self._reset()
                return
            self._entries[key] = (decision, sent_at)

    def invalidate(self, branch: str | None) -> None:
        with self._lock:
            if branch is None or len(self._generation) >= MAX_ENTRIES:
                self._reset()
                return
            self._generation[branch] = self._generation.get(branch, 0) + 1
            for key in [k for k in self._entries if k[0] == branch]:
                del self._entries[key]

    def ready(self, ping_s: float) -> None:
        with self._lock:
            self._reset()
            self._live, self._silence_s, self._heard_at = True, SILENCE_FACTOR * ping_s, time.monotonic()

    def heard(self) -> None:
        self._heard_at = time.monotonic()

    def down(self) -> None:
        with self._lock:
            self._live = False
            self._reset()

    def _reset(self) -> None:
        self._epoch += 1
        self._entries.clear()
        self._generation.clear()


class _ChangeStream:
    """A daemon thread holding ``GET /v1/changes`` open and feeding the cache."""

    def __init__(self, url: str, headers: dict[str, str], cache: _Cache, stats: GateStats) -> None:
        self.cache = cache
        self.stats = stats
        self._closed = threading.Event()
        self._http = httpx.Client(base_url=url, headers=headers, timeout=httpx.Timeout(5.0, read=STREAM_READ_S))
        self._thread = threading.Thread(target=self._run, name="indexgate-gate-changes", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        self._http.close()

    def _run(self) -> None:
        delay_s = 0.2
        while not self._closed.is_set():
            try:
                with self._http.stream("GET", CHANGES_PATH) as response:
                    if response.status_code == 200:
                        for event, data in _sse(response.iter_lines(), self.cache.heard):
                            if self._handle(event, data):
                                delay_s = 0.2
            except (httpx.HTTPError, RuntimeError, ValueError):  # a closed client raises RuntimeError
                pass
            self.cache.down()
            self._closed.wait(delay_s)
            delay_s = min(delay_s * 2, RECONNECT_MAX_S)

    def _handle(self, event: str, data: str) -> bool:
        """Apply one event; True once the stream is ready."""
        payload = _json(data)
        if event == "ready":
            self.cache.ready(float(payload.get("ping_s", 2.0)))
            self.stats.streams_ready += 1
            return True
        if event == "invalidate":
            branch = payload.get("branch")
            self.cache.invalidate(branch if isinstance(branch, str) else None)
            self.stats.invalidations += 1
            return False
        if event == "down":
            raise ValueError("the server's subscription is down")
        self.cache.invalidate(None)  # an event this version does not know: assume everything changed
        return False


def _sse(lines: Iterator[str], heard) -> Iterator[tuple[str, str]]:
    """(event, data) pairs of a Server-Sent Events stream; every line counts as a sign of life."""
    event, data = "message", []
    for line in lines:
        heard()
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)


def _json(data: str) -> dict:
    try:
        payload = json.loads(data)
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}
