"""Name our patched kombu transports by an alias that still shows the broker's own scheme.

Setting Celery's ``broker_transport`` to a class path works, but kombu then builds the
connection's URL from that path: ``app.connection().as_uri()`` becomes
``indexgate.events.brokers.redis_kombu:Transport://...``, and Flower's Broker page, which picks
its broker client by the URL's scheme, answers "broker is not supported". kombu has both
halves of the fix as extension points: ``kombu.transport.TRANSPORT_ALIASES`` resolves an
alias to a transport class, and ``kombu.connection.resolve_aliases`` is how kombu shows
``pyamqp`` as ``amqp``. Each broker module registers its transport here at import (two
dict entries, no I/O), so the app's URL stays ``redis://...`` / ``filesystem://`` while
the patched class is the one that runs.
"""

from __future__ import annotations

from kombu import connection as kombu_connection
from kombu import transport as kombu_transport


def register_alias(alias: str, transport_path: str, shown_as: str) -> str:
    """Make ``alias`` resolve to ``transport_path`` and print as ``shown_as://``."""
    kombu_transport.TRANSPORT_ALIASES[alias] = transport_path
    kombu_connection.resolve_aliases[alias] = shown_as
    return alias
