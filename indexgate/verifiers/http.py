"""Post-switch verification of an ``http(s)://`` location: a HEAD answers 2xx.

A server that refuses HEAD (405 Method Not Allowed, 501 Not Implemented) is asked with a
GET, whose body is not read. A few redirects (``max_redirects``) are followed. This runs
inside the switch's blackout, while writes to the affected resource types are denied, so
the HEAD and the GET share one budget of ``timeout_s``: the GET gets what the HEAD left
(each phase - connect, read, write, pool - is bounded by what is left when it starts). A
server that answers slowly but steadily can still outlast a phase timeout; the hard
deadline around every verification (``indexgate.verifiers._run``) cuts it off.

The ``httpx.Client`` is created on first use in the process that uses it (never before a
fork) and kept, so a switch does not pay for a new connection pool and TLS context.
"""

from __future__ import annotations

import os
from time import monotonic
from typing import Any

REFUSES_HEAD = frozenset({405, 501})


class HttpVerifier:
    def __init__(self, timeout_s: float, max_redirects: int) -> None:
        self.timeout_s = timeout_s
        self.max_redirects = max_redirects
        self._client: Any = None
        self._pid = 0

    def __call__(self, location: str) -> tuple[bool, str]:
        import httpx  # imported here: the CLI's permission check never needs it

        method, ends = "HEAD", monotonic() + self.timeout_s
        try:
            client = self._http(httpx)
            status = client.head(location).status_code
            if status in REFUSES_HEAD:
                method, left_s = "GET", ends - monotonic()
                if left_s <= 0:
                    return False, f"HEAD {location} answered {status} after the whole {self.timeout_s:g} s budget"
                with client.stream("GET", location, timeout=left_s) as response:
                    status = response.status_code
        except httpx.HTTPError as exc:
            return False, f"{method} {location} failed: {type(exc).__name__}: {exc or 'no detail'}"
        if 200 <= status < 300:
            return True, f"{method} {location} answered {status}"
        return False, f"{method} {location} answered {status}, not 2xx"

    def _http(self, httpx: Any) -> Any:
        if self._client is None or self._pid != os.getpid():
            self._client = httpx.Client(timeout=self.timeout_s, follow_redirects=True,
                                        max_redirects=self.max_redirects)
            self._pid = os.getpid()
        return self._client
