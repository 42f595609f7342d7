"""HTTP check: ``indexgate serve`` in its own process, asked from this one over keep-alive
HTTP, beside the in-process ``service.check`` on the same store in the same run.

- in-process ``service.check`` (the baseline: what the server does per request);
- one keep-alive connection, one request at a time, with a plain client (``http.client``):
  what the wire and the server add - the latency goal (p99 < 2 ms);
- ``CONNECTIONS`` keep-alive connections at once (threads here, one server process there):
  checks/s - the throughput goal (>= 3,000/s) -, with the latency under that load and the
  server's CPU per check (psutil) as the measured limit;
- ``indexgate.client.Gate.check`` (httpx), uncached: what the OMS pays per check;
- the CLI, ``indexgate check`` (a process per call), for scale;
- the same Gate with its L1 cache (``max_staleness_ms``): the answer from memory while the
  change stream is up (hit ratio counted), and how long a commit takes to reach the cache as
  an invalidation (a lock acquired or released by a service that announces on the broker,
  as a worker does) - the window in which a cached answer can be stale.

Every variant asks about a free resource type of a branch holding four locks (allowed, the
common case); variants are interleaved in slices so drift on the shared machine hits all.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

from bench.common import Figure, Report, broker_pid, bench_settings, percentiles, timed, wait_until
from indexgate.client import Gate
from indexgate.events.publisher import Publisher
from indexgate.locks import AcquireRequest
from indexgate.schemas.records import ReleaseReason
from indexgate.service import Origin, Service
from indexgate.testing.api import api_process
from indexgate.testing.processes import settings_env

LOCKED_TYPES = ("object_type", "link_type", "action_type", "interface")
CONNECTIONS = 4
SLICES = 10
STALENESS_MS = 1000.0
INVALIDATIONS = 50
CLI_CALLS = 10




class _RawClient:
    """One keep-alive connection, no library above the standard one."""

    def __init__(self, url: str, path: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port))
        self.path = path

    def __call__(self) -> bytes:
        self.conn.request("GET", self.path)
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200 or b'"allowed":true' not in body:
            raise RuntimeError(f"unexpected answer {response.status}: {body[:200]!r}")
        return body


def _parallel(url: str, path: str, connections: int, per_connection: int) -> tuple[float, list[float]]:
    """checks/s and latencies with ``connections`` keep-alive connections asking at once."""
    clients = [_RawClient(url, path) for _ in range(connections)]
    for client in clients:
        client()
    latencies: list[list[float]] = [[] for _ in clients]
    start = threading.Barrier(connections + 1)

    def ask(i: int) -> None:
        start.wait()
        latencies[i] = timed(clients[i], per_connection)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    start.wait()
    t0 = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - t0
    return connections * per_connection / elapsed, [x for part in latencies for x in part]


def _server_cpu_s(port: int) -> float:
    pid = broker_pid(port)  # whoever listens on the port: here the API server
    if pid is None:
        return float("nan")
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def _invalidation_ms(service: Service, gate: Gate, branch: str, n: int) -> tuple[list[float], list[float]]:
    """From the acquire call (its commit, then its announcement) to the cached answer being
    gone, and the acquire call's own duration: a lock on ``probe`` taken and released in
    turn; the Gate is polled (cache hits, or one request once invalidated) until it sees it."""
    delays, acquires = [], []
    origin = Origin(actor="bench")
    for i in range(n):
        job = f"inv-{i}"
        gate.check(branch, "probe")  # cache the allowed answer
        gate.check(branch, "probe")
        request = AcquireRequest(job_id=job, holder="bench", resource_types=("probe",), reason="bench")
        t0 = time.perf_counter()
        service.acquire(branch, request, origin)
        acquires.append((time.perf_counter() - t0) * 1000)
        wait_until(lambda: not gate.check(branch, "probe").allowed, timeout_s=10, every_s=0.0002)
        delays.append((time.perf_counter() - t0) * 1000)
        service.release(branch, job, ReleaseReason.COMPLETED, origin)
        wait_until(lambda: gate.check(branch, "probe").allowed, timeout_s=10, every_s=0.0002)
    return delays, acquires


def run(report: Report, folder: Path, broker: str, samples: int = 5000) -> dict:
    settings = bench_settings(folder, broker)
    publisher = Publisher(settings)
    service = Service.from_settings(settings, notify=publisher.publish_entries)
    branch = f"bench/http-{uuid.uuid4().hex[:8]}"
    for n, resource_type in enumerate(LOCKED_TYPES):
        service.acquire(branch, AcquireRequest(job_id=f"http-{n}", holder="bench", resource_types=(resource_type,),
                                               reason="bench"), Origin(actor="bench"))
    path = "/v1/check?" + urlencode({"branch": branch, "resource_type": "property_type"})
    with api_process(settings) as url:
        wait_until(lambda: _ready(url), timeout_s=30, every_s=0.1)
        port = int(url.rsplit(":", 1)[1])
        in_process = lambda: service.check(branch, "property_type")  # noqa: E731
        raw = _RawClient(url, path)
        gate = Gate(url, timeout_s=2)
        cached = Gate(url, timeout_s=2, max_staleness_ms=STALENESS_MS)
        wait_until(lambda: cached.cache_active, timeout_s=30, every_s=0.05)
        cached_check = lambda: cached.check(branch, "property_type")  # noqa: E731
        uncached_check = lambda: gate.check(branch, "property_type")  # noqa: E731
        for fn in (in_process, raw, uncached_check, cached_check):
            timed(fn, 300)  # warm connections and caches
        got: dict[str, list[float]] = {"in": [], "raw": [], "gate": [], "cached": []}
        hits_before, asked_before = cached.stats.cache_hits, cached.stats.server_checks
        seq_cpu = _CpuShare(port)
        for _ in range(SLICES):
            got["in"] += timed(in_process, samples // SLICES)
            got["raw"] += timed(raw, samples // SLICES)
            got["gate"] += timed(uncached_check, samples // SLICES)
            got["cached"] += timed(cached_check, samples // SLICES)
        sequential = seq_cpu.shares()
        hits = cached.stats.cache_hits - hits_before
        hit_ratio = hits / max(1, hits + cached.stats.server_checks - asked_before)

        meter = _CpuShare(port)
        rate, loaded = _parallel(url, path, CONNECTIONS, samples // CONNECTIONS * 2)
        cpu = meter.shares()
        server_cpu_ms = cpu["server_s"] * 1000 / (samples // CONNECTIONS * 2 * CONNECTIONS)
        invalidation = _invalidation_ms(service, cached, branch, INVALIDATIONS)
        cli = timed(lambda: _cli_check(settings, branch), CLI_CALLS)
        gate.close()
        cached.close()
    publisher.close()
    service.store.close()
    _report(report, got, rate, loaded, server_cpu_ms, cpu, sequential, invalidation, hit_ratio, samples)
    cli_p = percentiles(cli)
    report.add(Figure(f"CLI `indexgate check`, a process per call, p50 ({CLI_CALLS} calls)", cli_p["p50"], "ms",
                      "Gate.check p50, no cache", percentiles(got["gate"])["p50"], "informational", True,
                      f"max {cli_p['max']:.0f} ms: Python start, imports, settings, one store read"))
    return {"checks_per_s": rate}


class _CpuShare:
    """Cores used by the server, this process and the whole machine since construction."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.t0, self.server, self.bench, self.machine = time.perf_counter(), _server_cpu_s(port), _own_cpu_s(), \
            _machine_busy_s()

    def shares(self) -> dict[str, float]:
        wall = time.perf_counter() - self.t0
        server_s = _server_cpu_s(self.port) - self.server
        return {"server_s": server_s, "server": server_s / wall, "bench": (_own_cpu_s() - self.bench) / wall,
                "machine": (_machine_busy_s() - self.machine) / wall}

    @staticmethod
    def describe(share: dict[str, float]) -> str:
        others = max(0.0, share["machine"] - share["server"] - share["bench"])
        return (f"the machine was busy {share['machine']:.2f} of 2 cores meanwhile: the server {share['server']:.2f}, "
                f"this process {share['bench']:.2f}, other work {others:.2f}")


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _cli_check(settings, branch: str) -> None:
    done = subprocess.run([sys.executable, "-m", "indexgate.cli", "check", branch, "property_type"],
                          env=settings_env(settings), capture_output=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"indexgate check exited {done.returncode}: {done.stderr[-300:]!r}")


def _machine_busy_s() -> float:
    try:
        import psutil
    except ImportError:
        return float("nan")
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)


def _ready(url: str) -> bool:
    import httpx

    return httpx.get(f"{url}/readyz", timeout=2).status_code == 200


def _report(report: Report, got: dict[str, list[float]], rate: float, loaded: list[float], server_cpu_ms: float,
            cpu: dict[str, float], sequential: dict[str, float], invalidation: tuple[list[float], list[float]],
            hit_ratio: float, samples: int) -> None:
    base, raw, gate, cached = (percentiles(got[k]) for k in ("in", "raw", "gate", "cached"))
    load, inv, acquire = percentiles(loaded), percentiles(invalidation[0]), percentiles(invalidation[1])
    after = percentiles([total - own for total, own in zip(*invalidation)])
    in_rate = 1000 / base["mean"]
    cpu_note = (f"server CPU {server_cpu_ms:.3f} ms per check ({1000 / server_cpu_ms:.0f} checks/s would fill one "
                f"core); {CONNECTIONS} keep-alive connections from {CONNECTIONS} threads of this process; under that "
                f"load p50 {load['p50']:.3f} ms, p99 {load['p99']:.3f} ms; {_CpuShare.describe(cpu)}")
    wire = (f"p50 {raw['p50']:.3f} ms = in-process check {base['p50']:.3f} ms + the server's HTTP handling, the "
            f"store-thread hop with its deadline, and the loopback round trip; during the {4 * samples} sequential "
            f"samples (all four variants, interleaved) {_CpuShare.describe(sequential)}")
    report.add(Figure(f"HTTP check p50, one keep-alive connection ({samples} samples)", raw["p50"], "ms",
                      "in-process service.check p50", base["p50"], "informational", True, wire))
    report.add(Figure("HTTP check p99, one keep-alive connection", raw["p99"], "ms", "in-process service.check p99",
                      base["p99"], "p99 < 2 ms", raw["p99"] < 2, wire))
    report.add(Figure(f"HTTP checks/s, {CONNECTIONS} keep-alive connections", rate, "/s",
                      "in-process service.check /s", in_rate, ">= 3000 checks/s", rate >= 3000, cpu_note))
    report.add(Figure("HTTP check p99 under that load", load["p99"], "ms", "one connection p99", raw["p99"],
                      "informational", True))
    report.add(Figure("Gate.check p50 (indexgate.client, httpx, no cache)", gate["p50"], "ms",
                      "in-process service.check p50", base["p50"], "informational", True,
                      f"p99 {gate['p99']:.3f} ms; httpx's own per-request work is the difference to the plain client "
                      f"({raw['p50']:.3f} ms)"))
    report.add(Figure("Gate.check p99 (no cache)", gate["p99"], "ms", "in-process service.check p99", base["p99"],
                      "p99 < 2 ms", gate["p99"] < 2, f"p50 {gate['p50']:.3f} ms; {_CpuShare.describe(sequential)}"))
    report.add(Figure(f"Gate.check p50 with its L1 cache (max_staleness_ms={STALENESS_MS:.0f})", cached["p50"], "ms",
                      "Gate.check p50, no cache", gate["p50"], "informational", True,
                      f"p99 {cached['p99']:.3f} ms; {hit_ratio:.1%} of these checks answered from the cache (the rest "
                      f"went to the server when an entry was older than {STALENESS_MS:.0f} ms)"))
    report.add(Figure("Gate.check p99 with its L1 cache", cached["p99"], "ms", "Gate.check p99, no cache", gate["p99"],
                      "informational", True))
    report.add(Figure(f"L1 cache: commit -> invalidation seen by the Gate, p50 ({len(invalidation[0])} locks)",
                      inv["p50"], "ms", "max_staleness_ms", STALENESS_MS, "informational", True,
                      f"p99 {inv['p99']:.3f} ms, max {inv['max']:.3f} ms, counted from the start of the acquire call (its "
                      f"SQLite commits and announcement took p50 {acquire['p50']:.3f} ms, p99 {acquire['p99']:.3f} ms; from its "
                      f"return to the Gate seeing the change p50 {after['p50']:.3f} ms, p99 {after['p99']:.3f} ms): "
                      "a lock committed by a service that announces on the broker (as the worker does) -> outgoing "
                      "event -> the server's subscription -> /v1/changes -> the Gate drops the entry; a cached allowed "
                      "can be stale for this long"))
    report.add(Figure("L1 cache: commit -> invalidation seen, p99", inv["p99"], "ms", "max_staleness_ms",
                      STALENESS_MS, "informational", True))
    report.samples["HTTP check, one keep-alive connection (ms)"] = got["raw"]
    report.samples["Gate.check, no cache (ms)"] = got["gate"]
