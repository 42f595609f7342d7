"""Post-switch verification of an ``http(s)://`` location: a HEAD answers 2xx.

A server that refuses HEAD (405 Method Not Allowed, 501 Not Implemented) is asked with a
GET, whose body is not read. Redirects are followed. Every request is bounded by
``timeout_s`` (connect, read, write and pool each): this runs inside the switch's blackout,
while writes to the affected resource types are denied.

The ``httpx.Client`` is created on first use in the process that uses it (never before a
fork) and kept, so a switch does not pay for a new connection pool and TLS context.
"""

from __future__ import annotations

import os
from typing import Any

REFUSES_HEAD = frozenset({405, 501})


class HttpVerifier:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._client: Any = None
        self._pid = 0

    def __call__(self, location: str) -> tuple[bool, str]:
        import httpx  # imported here: the CLI's permission check never needs it

        method = "HEAD"
        try:
            client = self._http(httpx)
            status = client.head(location).status_code
            if status in REFUSES_HEAD:
                method = "GET"
                with client.stream("GET", location) as response:
                    status = response.status_code
        except httpx.HTTPError as exc:
            return False, f"{method} {location} failed: {type(exc).__name__}: {exc or 'no detail'}"
        if 200 <= status < 300:
            return True, f"{method} {location} answered {status}"
        return False, f"{method} {location} answered {status}, not 2xx"

    def _http(self, httpx: Any) -> Any:
        if self._client is None or self._pid != os.getpid():
            self._client = httpx.Client(timeout=self.timeout_s, follow_redirects=True)
            self._pid = os.getpid()
        return self._client
