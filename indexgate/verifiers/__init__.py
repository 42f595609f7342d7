"""Post-switch verification, chosen by the location's kind, and pluggable.

After the pointer swap the switch asks whether the new location answers; if it does not,
the swap is undone (automatic rollback). Which verifier asks depends on the location's kind
(``indexgate.locations.kind_of``):

- ``file`` (a local directory): it exists (``directory.py``);
- ``http`` / ``https``: a HEAD (or a GET where HEAD is refused) answers 2xx (``http.py``,
  bounded by ``INDEXGATE_VERIFY_TIMEOUT_S``);
- any other kind (``index-name``, ``es``, ``s3``...) and a build without a location: there
  is nothing to ask, so the location is an opaque pointer: it switches, recorded as
  ``verified: false`` with reason ``no verifier for <kind>``.

A deployment registers its own verifier for a kind (it wins over the built-in one):

- a setting, ``INDEXGATE_VERIFIERS='{"es": "mypackage.verify:es_alias"}'``, or
- an entry point in group ``indexgate.verifiers`` named after the kind
  (``[project.entry-points."indexgate.verifiers"] es = "mypackage.verify:es_alias"``);
  the setting wins over an entry point.

A verifier is a callable ``(location: str) -> bool | tuple[bool, str]``: True (verified) or
False (rolled back), with an optional reason. It runs inside the blackout, under a switch
lock nobody refreshes, so every verification - built-in or not - has one wall-clock
deadline, ``INDEXGATE_VERIFY_TIMEOUT_S`` (the settings keep twice it below the switch claim
window): the verifier runs in a daemon thread, and no answer by the deadline counts as a
failed verification (rolled back, the reason says so); its late answer is dropped. An
exception it raises, or an answer of another type, also counts as failed. Verifiers are
resolved (imported) before the switch lock is taken, and a kind's verifier is loaded once
per process; one that cannot be loaded is a ``ConfigError``.
"""

from __future__ import annotations

import importlib
import threading
from concurrent.futures import Future, TimeoutError as NoAnswer
from importlib.metadata import entry_points
from typing import Any, Callable, Mapping

from indexgate import locations
from indexgate.errors import ConfigError
from indexgate.schemas.shadows import Verification, VerifyOutcome

ENTRY_POINT_GROUP = "indexgate.verifiers"
DEFAULT_TIMEOUT_S = 2.0
MAX_REDIRECTS = 3  # an http(s) location may redirect this often (a load balancer, an alias), not 20 times
Verifier = Callable[[str], Any]  # -> bool | tuple[bool, str]
Check = Callable[[], Verification]  # a location's verification, ready to run inside the blackout


class Verifiers:
    """The verifier of each location kind: the deployment's, else the built-in one, else none."""

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S, custom: Mapping[str, str | Verifier] | None = None,
                 use_entry_points: bool = False) -> None:
        self.timeout_s = timeout_s
        self.custom = {kind.lower(): spec for kind, spec in (custom or {}).items()}
        self.use_entry_points = use_entry_points
        self._loaded: dict[str, tuple[Verifier, str] | None] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> "Verifiers":
        return cls(timeout_s=settings.verify_timeout_s, custom=settings.verifiers, use_entry_points=True)

    def prepare(self, location: str | None) -> Check:
        """Load the verifier of ``location``'s kind now (before the blackout); run it later."""
        kind = locations.kind_of(location)
        found = self._verifier(kind)
        if found is None or location is None:
            reason = "no location to verify" if location is None else f"no verifier for {kind}"
            return lambda: Verification(kind=kind, outcome=VerifyOutcome.NO_VERIFIER, reason=reason)
        verifier, name = found
        return lambda: _run(verifier, name, kind, location, self.timeout_s)

    def verify(self, location: str | None) -> Verification:
        return self.prepare(location)()

    def _verifier(self, kind: str) -> tuple[Verifier, str] | None:
        if kind not in self._loaded:
            self._loaded[kind] = self._load(kind)
        return self._loaded[kind]

    def _load(self, kind: str) -> tuple[Verifier, str] | None:
        spec = self.custom.get(kind)
        if spec is not None:
            return (spec, _name(spec)) if callable(spec) else (_import(spec, kind, "INDEXGATE_VERIFIERS"), spec)
        if self.use_entry_points:
            for point in entry_points(group=ENTRY_POINT_GROUP, name=kind):
                return _import(point.value, kind, f"entry point {ENTRY_POINT_GROUP}:{kind}"), point.value
        return _builtin(kind, self.timeout_s)


def _builtin(kind: str, timeout_s: float) -> tuple[Verifier, str] | None:
    if kind == locations.FILE:
        from indexgate.verifiers.directory import verify_directory

        return verify_directory, "directory"
    if kind in ("http", "https"):
        from indexgate.verifiers.http import HttpVerifier

        return HttpVerifier(timeout_s, MAX_REDIRECTS), "http"
    return None


def _import(spec: str, kind: str, where: str) -> Verifier:
    module_name, _, attribute = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"the verifier for {kind!r} locations ({spec}, from {where}) cannot be loaded: "
                          f"{type(exc).__name__}: {exc}") from exc
    if not callable(target):
        raise ConfigError(f"the verifier for {kind!r} locations ({spec}, from {where}) is not callable")
    return target


def _run(verifier: Verifier, name: str, kind: str, location: str, deadline_s: float) -> Verification:
    """One verification, answered by ``deadline_s``; whatever goes wrong in a deployment's
    verifier (an exception, a wrong answer, no answer in time) fails it, never the switch."""
    answered: Future = Future()

    def call() -> None:
        try:
            answered.set_result(verifier(location))
        except Exception as exc:  # a plugin boundary: any failure of it means "not verified"
            answered.set_exception(exc)

    threading.Thread(target=call, name=f"indexgate-verify-{kind}", daemon=True).start()
    try:
        answer = answered.result(timeout=deadline_s)
    except NoAnswer:  # it may still answer; nobody listens any more
        return _failed(kind, f"verifier {name} gave no answer within {deadline_s:g} s (INDEXGATE_VERIFY_TIMEOUT_S) "
                             f"for {location}")
    except Exception as exc:
        return _failed(kind, f"verifier {name} raised {type(exc).__name__}: {exc}")
    if isinstance(answer, tuple) and len(answer) == 2 and isinstance(answer[0], bool):
        ok, reason = answer[0], str(answer[1])
    elif isinstance(answer, bool):
        ok, reason = answer, f"verifier {name} answered {answer}"
    else:
        return _failed(kind, f"verifier {name} returned {answer!r}; expected a bool or (bool, reason)")
    return Verification(kind=kind, outcome=VerifyOutcome.VERIFIED if ok else VerifyOutcome.FAILED, reason=reason)


def _failed(kind: str, reason: str) -> Verification:
    return Verification(kind=kind, outcome=VerifyOutcome.FAILED, reason=reason)


def _name(verifier: Verifier) -> str:
    return f"{getattr(verifier, '__module__', '?')}:{getattr(verifier, '__qualname__', repr(verifier))}"
