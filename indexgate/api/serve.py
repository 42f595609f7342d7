"""``indexgate serve``: uvicorn running ``create_api(settings)``.

uvicorn picks uvloop and httptools when installed (the ``server`` extra installs them);
access logs are off (a line per check would cost more than the check), and ``X-Forwarded-*``
headers are not trusted (nothing here depends on the client's address). Open
``/v1/changes`` streams are told ``down`` and closed on shutdown, so a stop does not wait
for clients to hang up.
"""

from __future__ import annotations

import asyncio

import uvicorn

from indexgate.api.app import create_api, served_app
from indexgate.api.changes import Hub
from indexgate.settings import Settings

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


def run(settings: Settings, host: str = "127.0.0.1", port: int = 8700, log_level: str = "warning") -> None:
    app = create_api(settings)
    config = uvicorn.Config(served_app(app), host=host, port=port, log_level=log_level, access_log=False,
                            server_header=False, proxy_headers=False, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    _Server(config, app.state.indexgate.hub).run()
