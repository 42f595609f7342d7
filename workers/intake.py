"""The intake: a Celery consumer bootstep reading the funnel's CloudEvents.

Celery can only run its own task messages, so foreign messages arrive through a consumer
bootstep (Celery's documented hook). The handler runs in the worker's consumer thread, so
it stays light: it copies the raw message into one ``indexgate.intake`` task (durable,
persistent) and only then acks the original. Decoding, validation, dead-lettering and the
store all happen in the pool, under the tasks' retry policy. If the hand-off fails the
original is not acked and the broker delivers it again.
"""

from __future__ import annotations

import logging

from celery import bootsteps
from kombu import Consumer

from events.decode import RawMessage
from events.publisher import intake_queue
from workers.runtime import settings_of

log = logging.getLogger(__name__)

INTAKE_TASK = "indexgate.intake"


class IntakeStep(bootsteps.ConsumerStep):
    def __init__(self, parent, **kwargs) -> None:
        self.app = parent.app
        super().__init__(parent, **kwargs)

    def get_consumers(self, channel):
        prefetch = settings_of(self.app).intake_prefetch
        return [Consumer(channel, queues=[intake_queue(settings_of(self.app))], on_message=self.on_message,
                         prefetch_count=prefetch, accept=None)]

    def on_message(self, message) -> None:
        raw = RawMessage.build(
            message.headers, message.content_type, message.body,
            (message.delivery_info or {}).get("routing_key"),
        )
        try:
            self.app.send_task(INTAKE_TASK, args=[raw.model_dump(mode="json")])
        except Exception:
            log.exception("could not hand a funnel event to the pool; it stays unacked and will be redelivered")
            return
        message.ack()
