"""``indexgate serve``: uvicorn running ``create_api(settings)``.

uvicorn picks uvloop and httptools when installed (the ``server`` extra installs them);
access logs are off (a line per check would cost more than the check), and ``X-Forwarded-*``
headers are not trusted (nothing here depends on the client's address). Open
``/v1/changes`` streams are told ``down`` and closed on shutdown, so a stop does not wait
for clients to hang up.

The listening socket is bound here, before uvicorn starts, so an address in use (or not
local, or a port that needs privileges) is one ``ServeError`` naming it, not uvicorn's log
line and its exit code 3 (which the CLI documents as "denied"); a startup uvicorn itself
gives up on is a ``ServeError`` too.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Callable

import uvicorn

from indexgate import logs
from indexgate.api.app import create_api, served_app
from indexgate.api.changes import Hub
from indexgate.errors import ServeError
from indexgate.settings import Settings, sanitized_url

log = logging.getLogger("indexgate.api")

GRACEFUL_SHUTDOWN_S = 5


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, hub: Hub) -> None:
        super().__init__(config)
        self.hub = hub

    def handle_exit(self, sig, frame) -> None:
        try:  # a signal handler: hand the closing to the loop instead of touching its queues here
            asyncio.get_running_loop().call_soon_threadsafe(self.hub.close_all)
        except RuntimeError:
            pass
        super().handle_exit(sig, frame)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` (uvicorn listens on it), or ``ServeError``."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; check --host") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port or "
                         "--host, or stop what listens there") from None
    return sock


def run(settings: Settings, host: str = "127.0.0.1", port: int = 8700, log_level: str = "warning",
        listening: Callable[[], None] | None = None) -> None:
    """Serve until stopped; ``listening`` is called once the address is ours (the CLI's banner)."""
    json_logs = settings.log_format == "json"
    if json_logs:  # one JSON object per line; uvicorn's loggers (levels: log_level) propagate to it
        logs.configure_root(True, logging.INFO)
    app = create_api(settings)
    sock = listen(host, port)
    config = uvicorn.Config(served_app(app), host=host, port=port, log_level=log_level, access_log=False,
                            server_header=False, proxy_headers=False, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                            **({"log_config": None} if json_logs else {}))
    server = _Server(config, app.state.indexgate.hub)
    if json_logs:
        log.info("indexgate API on http://%s:%s (store %s, token %s)", host, port,
                 sanitized_url(settings.resolved_store_url), "required" if settings.api_token else "not required")
    if listening:
        listening()
    try:
        server.run(sockets=[sock])
    except SystemExit:  # uvicorn gave up starting (sys.exit(3)): say so, with our own exit code
        if server.started:
            raise
        raise ServeError(f"the API on {host}:{port} did not start (see the log above)") from None
    finally:
        sock.close()
