"""One exception root for everything indexgate raises on purpose.

::

    IndexgateError
    ├── ConfigError                 a setting cannot be used (bad URL scheme, ...)
    ├── BrokerUnavailable           the broker cannot be reached (CLI exit 5)
    ├── ServeError                  ``indexgate serve`` cannot start: it cannot listen on the
    │                               address (in use, not local, no permission) or its startup failed
    ├── DuplicateEvent              the event's source|id was committed by a concurrent delivery
    ├── MalformedEvent              an incoming event cannot be decoded or validated;
    │                               it is dead-lettered with this message as the reason
    ├── DeadLettered                an intake task dead-lettered some of its events (committed,
    │                               acked, never retried): its Celery state is FAILURE, so
    │                               Flower shows it as such, never as a plain SUCCESS
    ├── Fenced                      a sweep sent under a beat lease token that is no longer
    │                               current: it changed nothing (``indexgate.leases``)
    ├── TransientError              retry later: the task layer retries these with backoff
    │   ├── StoreError
    │   │   ├── StoreUnavailable    the store cannot be reached or is locked
    │   │   │   ├── StoreNotInitialized  no indexgate store there: never set up (or wrong URL)
    │   │   │   └── StoreTimeout    the store did not answer within the API's deadline
    │   │   └── VersionConflict     a compare-and-swap lost a race; reload and reapply
    │   └── SwitchInProgress        another switch of the same index holds the claim
    ├── OperatorError               an operator action cannot be done as asked
    │   ├── LockNotFound
    │   ├── InvalidRequest
    │   │   └── LimitExceeded       a configured limit (INDEXGATE_MAX_*) would be passed
    │   ├── InvalidTransition       a shadow build cannot move to that state now
    │   │   └── SwitchClaimed       it is SWITCHING: another switch holds its claim
    │   └── StaleFencingToken       a pointer update older than the last one applied
    └── GateError                   ``indexgate.client``: no answer it can trust came back;
        │                           never to be read as "allowed"
        ├── GateUnavailable         timeout, connection error, 5xx (503: the store cannot answer)
        ├── GateUnauthorized        401: the API wants INDEXGATE_API_TOKEN as a bearer token
        ├── GateBadRequest          422 / other 4xx: the parameters were refused
        └── GateMalformedAnswer     the answer is not of the documented shape

Messages say what happened and what to do about it, because the reader is an operator.
"""

from __future__ import annotations


class IndexgateError(Exception):
    """Root of every error indexgate raises deliberately."""


class ConfigError(IndexgateError):
    """A setting has a value indexgate cannot use."""


class BrokerUnavailable(IndexgateError):
    """The broker cannot be reached or refused the connection; the message names its URL
    (without the password). Raised by the intake transports (``events.brokers``) in the
    funnel-side and operator paths; the worker's own loops reconnect instead."""


class ServeError(IndexgateError):
    """``indexgate serve`` could not start serving; the message says where and why (CLI exit 1)."""


class DuplicateEvent(IndexgateError):
    """The event was already applied: its inbox key exists (the whole commit is rolled back)."""


class MalformedEvent(IndexgateError):
    """An incoming event is not a valid funnel CloudEvent; the message is the reason."""


class DeadLettered(IndexgateError):
    """Raised by an intake task *after* its batch was applied and its dead letters were
    committed (and, on Redis, its stream entries acked): nothing is retried or lost; the
    task ends in FAILURE so a dead letter never looks like a success. The message names
    the letters and what the rest of the batch did (``indexgate deadletters list``)."""


class Fenced(IndexgateError):
    """Work sent under a lease that has changed hands since; it stopped before changing anything
    (never retried: the lease's current holder sends its own)."""


class TransientError(IndexgateError):
    """A condition that passes: the same request later may well succeed."""


class SwitchInProgress(TransientError):
    """Another switch of this index is running (or crashed and its claim has not expired)."""


class StoreError(TransientError):
    """Something went wrong talking to the store."""


class StoreUnavailable(StoreError):
    """The store cannot be read or written right now (down, locked, unreadable)."""


class StoreNotInitialized(StoreUnavailable):
    """The store URL names nothing indexgate ever set up: a missing file or database, or one
    that ``indexgate setup`` (or a worker's start) never initialized. Reads answer "unknown"
    instead of reading an empty store as "nothing is locked"."""


class StoreTimeout(StoreUnavailable):
    """The store did not answer within the API's deadline (``INDEXGATE_API_STORE_TIMEOUT_S``):
    a hung or overloaded store is "unknown", never a late "allowed"."""


class VersionConflict(StoreError):
    """Another writer changed the aggregate since it was loaded."""


class OperatorError(IndexgateError):
    """An operator request cannot be carried out as asked."""


class LockNotFound(OperatorError):
    """No live lock has the given id."""


class InvalidRequest(OperatorError):
    """The request's arguments do not make sense (e.g. a negative extension)."""


class LimitExceeded(InvalidRequest):
    """A request would pass a configured limit; the message names the limit and its setting."""


class InvalidTransition(OperatorError):
    """The shadow build's state does not allow the requested change."""


class SwitchClaimed(InvalidTransition):
    """The build is SWITCHING: another switch holds its claim (until it ends or expires)."""


class StaleFencingToken(OperatorError):
    """A pointer update carried a fencing token no newer than the last one applied."""


class GateError(IndexgateError):
    """``indexgate.client.Gate`` got no answer it can trust; the OMS must treat it as "not
    allowed". ``status_code`` is the HTTP status when there was one, ``url`` what was asked."""

    def __init__(self, message: str, *, url: str = "", status_code: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status_code = status_code


class GateUnavailable(GateError):
    """Timeout, connection refused or reset, or a 5xx (503: the store cannot answer)."""


class GateUnauthorized(GateError):
    """401: the API requires its token (``Gate(url, token=...)``)."""


class GateBadRequest(GateError):
    """422 or another 4xx: the API refused the parameters."""


class GateMalformedAnswer(GateError):
    """The answer is not JSON of the documented shape (a proxy, a wrong URL, another version)."""
