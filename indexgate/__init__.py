"""indexgate: the lock and shadow-index switch coordinator for OMS branches.

The package is the core: the pure domain (``locks``), the use cases over a store
(``service``), configuration and the operator CLI. It knows nothing of Celery; the
``workers`` package is the Celery edge and ``events`` the CloudEvents edge.
"""

__version__ = "0.1.0"
