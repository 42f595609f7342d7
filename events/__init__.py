"""CloudEvents in and out: ``decode`` (SDK RabbitMQ binding -> ``IncomingEvent``),
``catalog`` (event type -> payload model -> service call), ``outgoing`` (audit entries ->
CloudEvents) and ``publisher`` (kombu producers for the funnel side and for outgoing)."""
