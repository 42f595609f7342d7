"""Helpers shared by the CLI modules: JSON output, exit codes, error handling."""

from __future__ import annotations

import getpass
import json
import socket
import sys
from functools import wraps
from typing import Any, Callable

import click

from indexgate.errors import IndexgateError, OperatorError, StoreUnavailable
from indexgate.locks import LockView
from indexgate.service import Service
from indexgate.settings import Settings

EXIT_DENIED = 3
EXIT_STORE_UNAVAILABLE = 4


def lock_json(v: LockView) -> dict[str, Any]:
    """The stable flat shape of a lock in ``--json`` output."""
    return v.lock.model_dump(mode="json") | {
        "health": str(v.health),
        "in_force": v.in_force,
        "death_reason": str(v.death_reason) if v.death_reason else None,
        "heartbeat_deadline": v.heartbeat_deadline.isoformat(),
        "seconds_since_heartbeat": v.seconds_since_heartbeat,
    }


def emit(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, default=str))


def operator_name() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def guarded(fn: Callable) -> Callable:
    """Turn indexgate errors into one readable line and the documented exit code."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except StoreUnavailable as exc:
            click.echo(f"store unreachable: {exc}", err=True)
            sys.exit(EXIT_STORE_UNAVAILABLE)
        except OperatorError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except IndexgateError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    return wrapper


def service() -> Service:
    return Service.from_settings(Settings())


