"""``python -m bench.chaos [--short] [--broker redis|rabbitmq] [scenario ...]``

Runs the chaos scenarios against real worker processes, a real broker and the SQLite
store, and prints one row per scenario (definitions in ``bench/chaos/common.py``), then
each scenario's notes. Everything runs on 127.0.0.1. With ``--broker redis`` (default)
each scenario that needs Redis starts its own ``redis-server`` on a free port and stops it
afterwards; ``sigkill_whole_rabbitmq`` and ``sigterm_rabbitmq`` always use the local
RabbitMQ (``sigterm`` and ``sigterm_kombu`` always a private Redis), and
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
from pathlib import Path

from bench.chaos import LEGEND, SCENARIOS, failures
from bench.chaos.common import quiet_logs, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", default=list(SCENARIOS), help=f"default all: {', '.join(SCENARIOS)}")
    parser.add_argument("--short", action="store_true", help="the CI sizes (about 3 minutes in all)")
    parser.add_argument("--broker", default="redis", choices=["redis", "rabbitmq"])
    parser.add_argument("--seed", type=int, default=None, help="one seed for every scenario's generator")
    parser.add_argument("--report", type=Path, default=None,
                        help="also write the table and notes as markdown here (e.g. bench/chaos/RESULTS.md)")
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
    bad = {row.scenario: failures(row) for row in rows if failures(row)}
    lines = [table(rows), LEGEND, ""]
    for row in rows:
        lines.append(f"[{row.scenario}] ({row.figures['seconds']} s)")
        lines += [f"  - {note}" for note in row.notes]
    lines.append("")
    if bad:
        lines.append("FAILED: " + "; ".join(f"{name} ({', '.join(why)})" for name, why in bad.items()))
    else:
        lines.append("all rows: 0 lost, 0 applied twice, 0 stuck, 0 crashes, no conflicts, no internal errors")
    text = "\n".join(lines)
    print("\n" + text)
    if args.report:
        _write_report(args.report, text, argv if argv is not None else sys.argv[1:])
    return 1 if bad else 0


def _write_report(path: Path, text: str, argv: list[str]) -> None:
    from bench.common import machine, now_iso

    header = (f"# Chaos results\n\nLatest run of `python -m bench.chaos {' '.join(argv)}` on {now_iso()}, "
              f"{machine()}. Regenerate with the same command.\n\n")
    path.write_text(header + "```\n" + text + "\n```\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
