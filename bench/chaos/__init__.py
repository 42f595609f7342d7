"""Chaos scenarios: real workers, a real broker and store, faults injected on purpose.

``python -m bench.chaos [--short] [--broker redis|rabbitmq]``; ``tests/test_chaos.py`` runs
the short version of each scenario. Definitions of the columns: ``bench/chaos/common.py``.
"""

from __future__ import annotations

from typing import Callable

from bench.chaos.common import Row


def _lazy(module: str, function: str = "run") -> Callable[..., Row]:
    def run(**kwargs) -> Row:
        import importlib

        return getattr(importlib.import_module(f"bench.chaos.{module}"), function)(**kwargs)

    return run


SCENARIOS: dict[str, Callable[..., Row]] = {
    "sigkill": _lazy("sigkill"),
    "sigkill_whole": _lazy("sigkill", "run_whole"),
    "sigkill_whole_kombu": _lazy("sigkill", "run_whole_kombu"),
    "sigkill_whole_rabbitmq": _lazy("sigkill", "run_whole_rabbitmq"),
    "sigterm": _lazy("sigterm"),
    "sigterm_kombu": _lazy("sigterm", "run_kombu"),
    "sigterm_rabbitmq": _lazy("sigterm", "run_rabbitmq"),
    "broker_restart": _lazy("broker_restart"),
    "broker_restart_kombu": _lazy("broker_restart", "run_kombu"),
    "broker_restart_rabbitmq": _lazy("broker_restart", "run_rabbitmq"),
    "store_outage": _lazy("store_outage"),
    "hostile": _lazy("hostile"),
    "mutex_history": _lazy("mutex_history"),
}


def failures(row: Row) -> list[str]:
    """Why a row fails (empty: it passes)."""
    checks = {"lost": row.lost, "applied twice": row.applied_twice, "stuck": row.stuck, "crashes": row.crashes,
              "conflicts": row.figures.get("conflicts"), "token regressions": row.figures.get("token_regressions"),
              "invariant violations": row.figures.get("invariant_violations"),
              "internal errors": row.figures.get("internal_errors"), "misrouted": row.figures.get("misrouted")}
    return [f"{name} {value}" for name, value in checks.items() if value]


def failed(row: Row) -> bool:
    return bool(failures(row))


LEGEND = """runs: sigkill* = mid-event SIGKILLs, sigterm* = mid-event SIGTERMs (warm shutdown, waited for until the
worker exited), broker_restart* = broker restarts (*_kombu: the funnel publishes with
plain kombu to the topic exchange on Redis, the kombu door), store_outage = outages,
hostile = Hypothesis examples drawn, mutex_history = SIGSTOP pauses. Definitions of the other
columns: bench/chaos/common.py. mutex_history publishes no events (processes call the service)."""
