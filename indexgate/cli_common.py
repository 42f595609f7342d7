"""Helpers shared by the CLI modules: settings, JSON output, exit codes, error handling.

Exit codes (the README lists them): 0 ok / allowed, 1 unexpected failure, 2 bad request
or usage, 3 denied, 4 unknown (the store cannot answer), 5 broker unreachable,
6 configuration error. Every failure is one line on stderr, never a traceback: ``guarded``
maps indexgate's errors to their codes, ``Tool`` (the root group) turns click's usage
errors and anything unexpected into one line too.
"""

from __future__ import annotations

import getpass
import json
import socket
import sys
from functools import wraps
from typing import Any, Callable

import click

from indexgate.errors import BrokerUnavailable, ConfigError, IndexgateError, OperatorError, StoreUnavailable
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
        except BrokerUnavailable as exc:
            click.echo(f"broker unreachable: {exc}", err=True)
            sys.exit(EXIT_BROKER_UNAVAILABLE)
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


class Tool(click.Group):
    """The root group: a usage error (bad option, missing argument, bad value) is one line
    and exit 2, as click's own are, but without the usage block; an unexpected error is one
    line and exit 1 instead of a traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            where = getattr(getattr(exc, "ctx", None), "command_path", None)
            hint = f" (see `{where} --help`)" if where and isinstance(exc, click.UsageError) else ""
            click.echo(f"error: {' '.join(exc.format_message().split())}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(EXIT_FAILURE)
        except Exception as exc:  # a bug: still one line, never a traceback
            click.echo(f"unexpected error: {type(exc).__name__}: {exc}", err=True)
            sys.exit(EXIT_FAILURE)
        sys.exit(code if isinstance(code, int) else 0)


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


