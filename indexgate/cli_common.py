"""Helpers shared by the CLI modules: settings, JSON output, exit codes, error handling.

Exit codes (the README lists them): 0 ok / allowed, 1 unexpected failure, 2 bad request
or usage, 3 denied, 4 unknown (the store cannot answer), 5 broker unreachable,
6 configuration error. Every failure is one line on stderr, never a traceback: ``guarded``
maps indexgate's errors to their codes (``fail``), ``Tool`` (the root group) does the same
for a command that is not guarded and turns click's usage errors and anything unexpected
into one line too. The parameter types below refuse, as the HTTP API does, what would
otherwise be asked quietly: an empty name (an unset shell variable: ``check "" ...`` must
not answer about branch ""), a limit below 1, seconds that are not a finite positive number.
"""

from __future__ import annotations

import getpass
import json
import math
import socket
import sys
from functools import wraps
from typing import Any, Callable, NoReturn

import click

from indexgate.errors import BrokerUnavailable, ConfigError, IndexgateError, OperatorError, StoreUnavailable
from indexgate.locks import LockView
from indexgate.permissions import LockStatus
from indexgate.schemas.payloads import MAX_NAME, MAX_SECONDS
from indexgate.service import Service
from indexgate.settings import Settings
from indexgate.store.base import MAX_READ_LIMIT

EXIT_FAILURE = 1
EXIT_BAD_REQUEST = 2
EXIT_DENIED = 3
EXIT_STORE_UNAVAILABLE = 4
EXIT_BROKER_UNAVAILABLE = 5
EXIT_CONFIG = 6
MAX_TEXT = 4096  # a --reason (the events' reasons have the same bound)

# most specific first: (error type, what the line starts with, exit code)
_EXITS: tuple[tuple[type[IndexgateError], str, int], ...] = (
    (StoreUnavailable, "store unreachable", EXIT_STORE_UNAVAILABLE),
    (BrokerUnavailable, "broker unreachable", EXIT_BROKER_UNAVAILABLE),
    (OperatorError, "error", EXIT_BAD_REQUEST),
    (ConfigError, "configuration error", EXIT_CONFIG),
    (IndexgateError, "error", EXIT_FAILURE),
)


class Name(click.ParamType):
    """A branch, resource type, id, action or source: not blank, at most ``most`` characters."""

    def __init__(self, most: int = MAX_NAME, name: str = "name") -> None:
        self.most = most
        self.name = name  # click's metavar in --help: NAME, TEXT

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if not text.strip():
            self.fail("must not be empty", param, ctx)
        if len(text) > self.most:
            self.fail(f"is {len(text)} characters long, over the limit of {self.most}", param, ctx)
        return text


class Seconds(click.ParamType):
    """A finite number of seconds in ``(0, MAX_SECONDS]``: click's ``FloatRange`` lets ``nan``
    through, and ``inf`` or ``1e308`` would overflow a datetime further down."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = click.FLOAT.convert(value, param, ctx)
        if not (math.isfinite(number) and 0 < number <= MAX_SECONDS):
            self.fail(f"{value!r} is not a positive, finite number of seconds (at most {MAX_SECONDS}: ten years)",
                      param, ctx)
        return number


NAME = Name()
TEXT = Name(MAX_TEXT, "text")
SECONDS = Seconds()
LIMIT = click.IntRange(1, MAX_READ_LIMIT)  # what GET /v1/audit and /v1/deadletters accept
PORT = click.IntRange(1, 65535)


def lock_json(v: LockView) -> dict[str, Any]:
    """The stable flat shape of a lock in ``--json`` output (the HTTP API's too)."""
    return LockStatus.of(v).model_dump(mode="json")


def emit(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, default=str))


def operator_name() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def fail(exc: IndexgateError) -> NoReturn:
    """One readable line for an indexgate error, and its documented exit code."""
    prefix, code = next((prefix, code) for kind, prefix, code in _EXITS if isinstance(exc, kind))
    click.echo(f"{prefix}: {exc}", err=True)
    sys.exit(code)


def guarded(fn: Callable) -> Callable:
    """Turn indexgate errors into one readable line and the documented exit code."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except IndexgateError as exc:
            fail(exc)

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
        except IndexgateError as exc:  # a command without @guarded (the root group's settings, demo)
            fail(exc)
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


