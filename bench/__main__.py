"""``python -m bench``: run the benchmarks, print every figure beside its baseline, write
``bench/results/`` (JSON, markdown, histogram PNG). Needs Redis (or RabbitMQ) on localhost."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench import switch
from bench.common import Report, machine, now_iso

SUITES = {"switch": switch.run}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("suites", nargs="*", default=list(SUITES), help=f"which ({', '.join(SUITES)}); default all")
    parser.add_argument("--broker", default="redis", help="redis (default), rabbitmq, or a broker URL")
    parser.add_argument("--switches", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    report = Report(context={"when": now_iso(), "machine": machine(), "broker": args.broker,
                             "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])})
    print(f"indexgate benchmarks on {args.broker}; every figure beside a baseline from this run")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.suites:
            print(f"[{name}]", flush=True)
            if name == "switch":
                switch.run(report, Path(tmp) / name, args.broker, switches=args.switches)
    report.write(args.out)
    print(f"wrote {args.out}/results.json, RESULTS.md, latency.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
