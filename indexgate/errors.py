"""One exception root for everything indexgate raises on purpose.

::

    IndexgateError
    ├── ConfigError                 a setting cannot be used (bad URL scheme, ...)
    ├── DuplicateEvent              the event's source|id was committed by a concurrent delivery
    ├── MalformedEvent              an incoming event cannot be decoded or validated;
    │                               it is dead-lettered with this message as the reason
    ├── TransientError              retry later: the task layer retries these with backoff
    │   ├── StoreError
    │   │   ├── StoreUnavailable    the store cannot be reached or is locked
    │   │   │   └── StoreNotInitialized  no indexgate store there: never set up (or wrong URL)
    │   │   └── VersionConflict     a compare-and-swap lost a race; reload and reapply
    │   └── SwitchInProgress        another switch of the same index holds the claim
    └── OperatorError               an operator action cannot be done as asked
        ├── LockNotFound
        ├── InvalidRequest
        │   └── LimitExceeded       a configured limit (INDEXGATE_MAX_*) would be passed
        ├── InvalidTransition       a shadow build cannot move to that state now
        │   └── SwitchClaimed       it is SWITCHING: another switch holds its claim
        └── StaleFencingToken       a pointer update older than the last one applied

Messages say what happened and what to do about it, because the reader is an operator.
"""

from __future__ import annotations


class IndexgateError(Exception):
    """Root of every error indexgate raises deliberately."""


class ConfigError(IndexgateError):
    """A setting has a value indexgate cannot use."""


class DuplicateEvent(IndexgateError):
    """The event was already applied: its inbox key exists (the whole commit is rolled back)."""


class MalformedEvent(IndexgateError):
    """An incoming event is not a valid funnel CloudEvent; the message is the reason."""


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
