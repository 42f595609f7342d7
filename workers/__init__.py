"""The Celery edge: ``celery -A workers worker|beat|flower`` finds ``workers.app`` here.

``app`` is the one module-level global the project allows; it is built from
``Settings()`` (the ``INDEXGATE_*`` environment) and opens no connection at import.
"""

from workers.app import create_app

app = create_app()

__all__ = ["app", "create_app"]
