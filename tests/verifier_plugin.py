"""A deployment's own verifier, registered in the verifier tests by setting and by entry point.

It stands for an Elasticsearch alias check: ``es://cluster/<alias>`` is verified when the
alias is in ``KNOWN`` (a test fills it), and fails otherwise. ``CALLS`` records every call.
"""

from __future__ import annotations

from urllib.parse import urlparse

KNOWN: set[str] = set()
CALLS: list[str] = []


def es_alias(location: str) -> tuple[bool, str]:
    CALLS.append(location)
    alias = urlparse(location).path.lstrip("/")
    if alias in KNOWN:
        return True, f"alias {alias} resolves"
    return False, f"alias {alias} is unknown to the cluster"


def exploding(location: str) -> bool:
    raise ConnectionError(f"cluster of {location} unreachable")
