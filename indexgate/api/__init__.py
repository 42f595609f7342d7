"""The HTTP API edge (FastAPI): ``create_api(settings)``, run by ``indexgate serve``.

It imports the core (service, store, settings); the core imports nothing from here.
Needs the ``server`` extra (FastAPI, uvicorn, kombu for the change feed).
"""

from indexgate.api.app import create_api

__all__ = ["create_api"]
