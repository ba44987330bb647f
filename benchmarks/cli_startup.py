"""How long `python -m flows --help` takes (issue target: under 3 s). Writes
benchmarks/results/cli_startup.json.  Run: .venv/bin/python benchmarks/cli_startup.py"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(repeats: int = 5) -> dict:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "flows", "--help"], cwd=REPO, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    result = {"command": "python -m flows --help", "repeats": repeats,
              "seconds_median": statistics.median(times), "seconds_max": max(times), "target_seconds": 3.0}
    out = REPO / "benchmarks" / "results" / "cli_startup.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
