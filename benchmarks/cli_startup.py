"""How long `python -m flows --help` takes (issue target: under 3 s). Writes
benchmarks/results/cli_startup.json (or --out).  Run: .venv/bin/python benchmarks/cli_startup.py [--repeats 5] [--out F]"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks._cli import output_file, positive_int  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=positive_int, default=5, help="timed runs of `python -m flows --help`")
    ap.add_argument("--out", type=output_file, default=REPO / "benchmarks" / "results" / "cli_startup.json",
                    help="the JSON result (default: benchmarks/results/cli_startup.json)")
    args = ap.parse_args(argv)

    from components.io import atomic_file

    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "flows", "--help"], cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"error: `python -m flows --help` exited {proc.returncode}:\n{proc.stderr.strip()}", file=sys.stderr)
            return 1
        times.append(time.perf_counter() - t0)
    result = {"command": "python -m flows --help", "repeats": args.repeats,
              "seconds_median": statistics.median(times), "seconds_max": max(times), "target_seconds": 3.0}
    with atomic_file(args.out) as fh:
        fh.write(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
