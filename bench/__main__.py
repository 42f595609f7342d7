"""``python -m bench``: run the benchmarks, print every figure beside a baseline measured in
the same run, and write ``RESULTS.md``, ``results.json`` and ``latency.png`` into ``bench/``
(``--out`` elsewhere). Needs Redis (and RabbitMQ for ``--broker rabbitmq``) on localhost.

Suites (default: all but soak and sweeps, in this order): throughput, latency, locks,
check, http, dead_holder, switch. ``--soak N`` adds the soak (N events) to the suites run; to
run only the soak: ``python -m bench soak --soak 20000``; ``--branches N`` makes the soak's
jobs run on N distinct branches. ``python -m bench sweeps`` measures the sweeps at 1,000 /
10,000 / 100,000 locked branches (``--sweep-sizes``). Nothing asserts: goals are reported met or
missed, and a suite that fails is reported and the others still run (exit status 1).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import check, dead_holder, http, latency, locks, soak, soak_branches, sweeps, switch, throughput
from bench.common import Report, machine, now_iso

DEFAULT = ["throughput", "latency", "locks", "check", "http", "dead_holder", "switch"]
SUITES = DEFAULT + ["soak", "sweeps"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suites", nargs="*", metavar="suite", help=f"which of {', '.join(SUITES)}; default all but soak")
    parser.add_argument("--broker", default="redis", help="redis (default), rabbitmq, or a broker URL")
    parser.add_argument("--heartbeats", type=int, default=3000, help="throughput: heartbeats (and noop tasks)")
    parser.add_argument("--latency-events", type=int, default=1000, help="latency: paced heartbeats (at most ~10 s)")
    parser.add_argument("--lock-ops", type=int, default=500)
    parser.add_argument("--checks", type=int, default=5000, help="check, http: samples per variant")
    parser.add_argument("--dead-runs", type=int, default=10)
    parser.add_argument("--switches", type=int, default=100)
    parser.add_argument("--soak", type=int, metavar="N", help="also run the soak with N events")
    parser.add_argument("--branches", type=int, metavar="N",
                        help="soak: N distinct branches, one job each (started, heartbeats, completed)")
    parser.add_argument("--sweep-sizes", default="1000,10000,100000", help="sweeps: locked branches per step")
    parser.add_argument("--diagnose", action="store_true",
                        help="throughput: also measure a worker with Celery task events off (diagnostic)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="where to write (default bench/)")
    parser.add_argument("--section", metavar="NAME",
                        help="write this run as section 'Section: NAME' of the existing RESULTS.md instead of replacing it")
    args = parser.parse_args(argv)
    names = list(args.suites or DEFAULT)
    if (args.soak or args.branches) and "soak" not in names:
        names.append("soak")
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")

    store = "MongoDB (MONGODB_URL)" if os.environ.get("MONGODB_URL") else "SQLite (embedded, synchronous=FULL)"
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    report = Report(context={"when": now_iso(), "machine": machine(), "broker": args.broker, "store": store,
                             "suites": ", ".join(names), "load average at start": load,
                             "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])])})
    print(f"indexgate benchmarks on {args.broker}, store {store}; load average {load}")
    print("every figure beside a baseline measured in this run; goals are reported, not asserted")
    failed: list[str] = []
    results: dict[str, object] = {}
    t_all = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="indexgate-bench-") as tmp:
        for name in names:
            print(f"[{name}]", flush=True)
            folder = Path(tmp) / name
            t0 = time.monotonic()
            try:
                if name == "throughput":
                    results[name] = throughput.run(report, folder, args.broker, heartbeats=args.heartbeats,
                                                   diagnose=args.diagnose)
                elif name == "latency":
                    results[name] = latency.run(report, folder, args.broker, rate=results.get("throughput"),
                                                events=args.latency_events)
                elif name == "locks":
                    results[name] = locks.run(report, folder, args.broker, ops=args.lock_ops)
                elif name == "check":
                    results[name] = check.run(report, folder, args.broker, samples=args.checks)
                elif name == "http":
                    results[name] = http.run(report, folder, args.broker, samples=args.checks)
                elif name == "dead_holder":
                    results[name] = dead_holder.run(report, folder, args.broker, runs=args.dead_runs)
                elif name == "switch":
                    results[name] = switch.run(report, folder, args.broker, switches=args.switches)
                elif name == "soak" and args.branches:
                    results[name] = soak_branches.run(report, folder, args.broker, branches=args.branches)
                elif name == "soak":
                    results[name] = soak.run(report, folder, args.broker, events=args.soak or 20_000)
                elif name == "sweeps":
                    sizes = tuple(int(n) for n in args.sweep_sizes.split(","))
                    results[name] = sweeps.run(report, folder, args.broker, sizes=sizes)
            except Exception as exc:  # report it, keep the other suites' figures
                traceback.print_exc()
                failed.append(f"- {name}: {type(exc).__name__}: {exc}")
            print(f"  ({name}: {time.monotonic() - t0:.0f} s)", flush=True)
    report.context["duration_s"] = f"{time.monotonic() - t_all:.0f}"
    if failed:
        report.context["errors"] = "\n".join(failed)
    if args.section:
        report.write_section(args.out, f"Section: {args.section}")
        print(f"wrote section {args.section!r} of {args.out}/RESULTS.md and results.json")
    else:
        report.write(args.out)
        print(f"wrote {args.out}/RESULTS.md, results.json, latency.png in {report.context['duration_s']} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
