"""The embedded broker: kombu's ``filesystem://`` transport with atomic message files.

kombu's stock ``_put`` creates ``<name>.msg`` and only then locks and writes it, so a
consumer in another process can pick up the still-empty file and crash on it (seen here:
``JSONDecodeError`` in ``_get`` on the first message of a fresh folder). This subclass
writes to a temporary name the consumer ignores and renames it into place with
``os.replace``, which is atomic on one filesystem. Everything else is kombu's.

Like the stock transport it has no redelivery of unacked messages after a crash: the
embedded broker is for one machine and for trying indexgate out; use Redis or RabbitMQ
where losing an in-flight message on a crash matters.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

TRANSPORT = "indexgate.events.fs_transport:Transport"


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
