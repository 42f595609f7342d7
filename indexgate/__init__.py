"""indexgate: the lock and shadow-index switch coordinator for OMS branches.

The package is the core: the pure domain (``locks``), the use cases over a store
(``service``), configuration and the operator CLI. It knows nothing of Celery; the
``workers`` package is the Celery edge, ``events`` the CloudEvents edge and ``api`` the
HTTP edge; ``client`` is what the OMS installs to ask over HTTP (pydantic and httpx only).
"""

__version__ = "0.1.0"
