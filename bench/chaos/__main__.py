"""``python -m bench.chaos [--short] [--broker redis|rabbitmq] [scenario ...]``

Runs the chaos scenarios against real worker processes, a real broker and the SQLite
store, and prints one row per scenario (definitions in ``bench/chaos/common.py``), then
each scenario's notes. Everything runs on 127.0.0.1. With ``--broker redis`` (default)
each scenario that needs Redis starts its own ``redis-server`` on a free port and stops it
afterwards; ``sigkill_whole_rabbitmq`` always uses the local RabbitMQ, and
``broker_restart_rabbitmq`` starts a private RabbitMQ node (the shared one is never
restarted). ``--broker rabbitmq`` runs sigkill, sigkill_whole, store_outage and hostile on
the local RabbitMQ instead.
Exit status 1 if any row has lost, applied-twice or stuck events, a crash, a conflict
(mutex_history), or an internal error / misrouted message / invariant violation (hostile).
"""

from __future__ import annotations

import argparse
import sys
import time

from bench.chaos import LEGEND, SCENARIOS, failures
from bench.chaos.common import quiet_logs, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", default=list(SCENARIOS), help=f"default all: {', '.join(SCENARIOS)}")
    parser.add_argument("--short", action="store_true", help="the CI sizes (about 3 minutes in all)")
    parser.add_argument("--broker", default="redis", choices=["redis", "rabbitmq"])
    parser.add_argument("--seed", type=int, default=None, help="one seed for every scenario's generator")
    args = parser.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    quiet_logs()
    print(f"indexgate chaos ({'short' if args.short else 'full'}) on {args.broker}", flush=True)
    rows = []
    for name in args.scenarios:
        started = time.monotonic()
        extra = {} if args.seed is None else {"seed": args.seed}
        row = SCENARIOS[name](broker=args.broker, short=args.short, **extra)
        row.figures["seconds"] = round(time.monotonic() - started, 1)
        print(f"  {name}: done in {row.figures['seconds']} s", flush=True)
        rows.append(row)
    print()
    print(table(rows))
    print(LEGEND)
    print()
    for row in rows:
        print(f"[{row.scenario}] ({row.figures['seconds']} s)")
        for note in row.notes:
            print(f"  - {note}")
    bad = {row.scenario: failures(row) for row in rows if failures(row)}
    print()
    if bad:
        print("FAILED: " + "; ".join(f"{name} ({', '.join(why)})" for name, why in bad.items()))
    else:
        print("all rows: 0 lost, 0 applied twice, 0 stuck, 0 crashes, no conflicts, no internal errors")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
