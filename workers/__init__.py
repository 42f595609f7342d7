"""The Celery edge: ``celery -A indexgate.workers worker|beat|flower`` finds ``app`` here.

``app`` is the one module-level global the project allows; it is built from the
``INDEXGATE_*`` environment and opens no connection at import. This folder is installed
as ``indexgate.workers`` (see ``pyproject.toml``), so nothing generic lands at the top of
an environment; from a checkout ``celery -A workers`` still works: imported under that
name, this module hands over to ``indexgate.workers`` instead of building a second app.
"""

import importlib
import sys

if __name__ != "indexgate.workers":  # ``celery -A workers`` from a checkout
    sys.modules[__name__] = importlib.import_module("indexgate.workers")
else:
    from indexgate.errors import ConfigError
    from indexgate.workers.app import create_app

    try:
        app = create_app()
    except ConfigError as exc:  # celery -A: one clear line, not Celery's traceback dump
        raise SystemExit(f"indexgate: configuration error: {exc}") from None

    __all__ = ["app", "create_app"]
