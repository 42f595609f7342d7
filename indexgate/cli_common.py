"""Helpers shared by the CLI modules: settings, JSON output, exit codes, error handling.

Exit codes (the README lists them): 0 ok / allowed, 1 unexpected failure, 2 bad request
or usage, 3 denied, 4 unknown (the store cannot answer), 5 broker unreachable,
6 configuration error. Every failure is one line on stderr, never a traceback.
"""

from __future__ import annotations

import getpass
import json
import socket
import sys
from functools import wraps
from typing import Any, Callable

import click

from indexgate.errors import ConfigError, IndexgateError, OperatorError, StoreUnavailable
from indexgate.locks import LockView
from indexgate.permissions import LockStatus
from indexgate.service import Service
from indexgate.settings import Settings

EXIT_FAILURE = 1
EXIT_BAD_REQUEST = 2
EXIT_DENIED = 3
EXIT_STORE_UNAVAILABLE = 4
EXIT_BROKER_UNAVAILABLE = 5
EXIT_CONFIG = 6


def lock_json(v: LockView) -> dict[str, Any]:
    """The stable flat shape of a lock in ``--json`` output (the HTTP API's too)."""
    return LockStatus.of(v).model_dump(mode="json")


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
            sys.exit(EXIT_BAD_REQUEST)
        except ConfigError as exc:
            click.echo(f"configuration error: {exc}", err=True)
            sys.exit(EXIT_CONFIG)
        except IndexgateError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_FAILURE)

    return wrapper


def load_settings() -> Settings:
    """Read and check the environment once per command (the root group does it first)."""
    ctx = click.get_current_context(silent=True)
    root = ctx.find_root() if ctx else None
    if root is not None and isinstance(root.obj, Settings):
        return root.obj
    settings = Settings.from_env()
    if root is not None:
        root.obj = settings
    return settings


def service() -> Service:
    return Service.from_settings(load_settings())


