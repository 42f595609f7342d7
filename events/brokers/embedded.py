"""The embedded broker (no ``INDEXGATE_BROKER_URL``): kombu's ``filesystem://`` transport
under ``<data_dir>/broker``, with atomic message files.

kombu's stock ``_put`` creates ``<name>.msg`` and only then locks and writes it, so a
consumer in another process can pick up the still-empty file and crash on it (seen here:
``JSONDecodeError`` in ``_get`` on the first message of a fresh folder). ``Channel`` below
writes to a temporary name the consumer ignores and renames it into place with
``os.replace``, which is atomic on one filesystem. Everything else is kombu's. The Celery
app names it by the alias ``indexgate-filesystem``, shown as ``filesystem://``.

Like the stock transport it has no redelivery of unacked messages after a crash: the
embedded broker is for one machine and for trying indexgate out; use Redis or RabbitMQ
where losing an in-flight message on a crash matters. The control folder holds the
exchange bindings, so a publisher in another process (the CLI) routes to the topic
exchange the worker (or ``indexgate setup``) declared.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

from indexgate.events.brokers.base import QueueTransport
from indexgate.events.brokers.kombu_alias import register_alias

TRANSPORT = "indexgate.events.brokers.embedded:Transport"
ALIAS = register_alias("indexgate-filesystem", TRANSPORT, shown_as="filesystem")


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs) -> None:
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".partial"
        try:
            with open(partial, "wb") as handle:
                handle.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel


class EmbeddedTransport(QueueTransport):
    kind = "embedded"
    kombu_alias = ALIAS

    def folders(self) -> dict[str, Path]:
        base = self.settings.data_dir / "broker"
        return {"data_folder_in": base / "queue", "data_folder_out": base / "queue",
                "processed_folder": base / "processed", "control_folder": base / "control"}

    def transport_options(self) -> dict[str, Any]:
        """The folders; kombu's default polling interval of 1 s would add a second per hop."""
        return {key: str(value) for key, value in self.folders().items()} | {"polling_interval": 0.1}

    def prepare(self) -> None:
        for folder in self.folders().values():
            folder.mkdir(parents=True, exist_ok=True)

    def consumers_known(self) -> bool:
        return False  # the filesystem transport reports 0 consumers whoever reads

    def delivery_note(self) -> str:
        return "embedded filesystem broker: no redelivery of unacked messages after a crash"

    def teardown(self, queues, exchanges) -> None:
        """Nothing to do: the broker lives under data_dir, which a run deletes."""
