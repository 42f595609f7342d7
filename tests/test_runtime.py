"""The outage tracker: one error line per store outage per machine, not one per pool process."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from indexgate.errors import StoreUnavailable
from indexgate.workers.runtime import Outage

DOWN = StoreUnavailable("database is locked")


def lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and r.name == "indexgate.workers.runtime"]


def test_two_processes_in_one_outage_log_it_once_and_its_end_once(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="indexgate.workers.runtime")  # other tests may quiet "workers"
    flag = tmp_path / "store-outage.flag"
    first, second = Outage(flag), Outage(flag)  # two pool processes share the data dir
    for _ in range(3):
        first.failed(DOWN)
        second.failed(DOWN)
    assert lines(caplog, logging.ERROR) == [f"store unavailable, events are being retried with backoff: {DOWN}"]
    second.succeeded()
    first.succeeded()
    first.succeeded()
    assert lines(caplog, logging.WARNING) == ["store reachable again (3 failed attempt(s) in this process)"]
    assert not flag.exists()
    first.failed(DOWN)  # the next outage is logged again
    assert len(lines(caplog, logging.ERROR)) == 2


def test_a_flag_left_by_a_killed_worker_hides_a_new_outage_only_until_it_is_stale(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="indexgate.workers.runtime")  # other tests may quiet "workers"
    flag = tmp_path / "store-outage.flag"
    flag.touch()
    old = time.time() - 301
    os.utime(flag, (old, old))
    Outage(flag, remind_s=300).failed(DOWN)
    assert len(lines(caplog, logging.ERROR)) == 1
    Outage(flag, remind_s=300).failed(DOWN)  # fresh again: a second process stays quiet
    assert len(lines(caplog, logging.ERROR)) == 1


def test_a_success_in_a_process_that_saw_no_failure_ends_the_outage(tmp_path: Path, caplog) -> None:
    """The process that reported the outage was killed; any other one's success clears it."""
    caplog.set_level(logging.WARNING, logger="indexgate.workers.runtime")
    flag = tmp_path / "store-outage.flag"
    Outage(flag).failed(DOWN)
    assert flag.exists()
    Outage(flag).succeeded()
    assert not flag.exists() and lines(caplog, logging.WARNING) == [
        "store reachable again (0 failed attempt(s) in this process)"]


def test_the_intake_sees_a_fresh_outage_flag_but_not_a_stale_one(tmp_path: Path) -> None:
    from indexgate.settings import Settings
    from indexgate.workers.runtime import REMIND_S, outage_flag, outage_reported

    settings = Settings(data_dir=tmp_path, store_retry_max_s=60)
    assert not outage_reported(settings)
    outage_flag(settings).touch()
    assert outage_reported(settings)
    old = time.time() - REMIND_S - 61
    os.utime(outage_flag(settings), (old, old))
    assert not outage_reported(settings)  # left by a killed worker: not honoured
