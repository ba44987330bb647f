"""What one `python -m flows` stage costs beyond its own work: the CLI as DVC runs it (Python's cyclic
garbage collector paused while it imports, its objects frozen before the flow and at exit;
`flows.__main__._run`) against the same `flows.__main__.main` called with the interpreter's default
collector, alternated in one run.

Each command runs the stage `har data` (the cheapest stage; a few seconds of rendering) in a scratch
project root (`PAPERWORKS_ROOT`, with this checkout's params.yaml), so the checkout's data and MLflow
store are not touched. Per command: wall time of the whole process and the stage's own time (the
flow's "stage <paper>/<stage>: done in X s" line); overhead = wall - stage (interpreter start-up, imports,
Prefect's temporary server, MLflow set-up, exit). Writes benchmarks/results/stage_overhead.json
(or --out).  Run: .venv/bin/python benchmarks/stage_overhead.py [--repeats 3] [--out F]"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks._cli import output_file, positive_int  # noqa: E402

STAGE = ("har", "data")
VARIANTS = {
    # what `dvc repro har_data` runs
    "cli": [sys.executable, "-m", "flows", *STAGE],
    # the same main(), without _run()'s collector handling
    "default_gc": [sys.executable, "-c", "import sys; from flows.__main__ import main; "
                   f"sys.exit(main({list(STAGE)!r}))"],
}
DONE = re.compile(rf"stage {STAGE[0]}/{STAGE[1]}: done in ([0-9.]+) s")


def _once(cmd: list[str], root: Path) -> dict[str, float]:
    env = {**os.environ, "PAPERWORKS_ROOT": str(root), "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    match = DONE.search(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not match:
        tail = (proc.stdout + proc.stderr).strip()[-2000:]
        raise RuntimeError(f"`{' '.join(cmd)}` exited {proc.returncode} without a stage time:\n{tail}")
    stage = float(match.group(1))
    return {"wall_s": wall, "stage_s": stage, "overhead_s": wall - stage}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=positive_int, default=3, help="runs of each variant, alternated")
    ap.add_argument("--out", type=output_file, default=REPO / "benchmarks" / "results" / "stage_overhead.json",
                    help="the JSON result (default: benchmarks/results/stage_overhead.json)")
    args = ap.parse_args(argv)

    from components.io import atomic_file

    runs: dict[str, list[dict[str, float]]] = {k: [] for k in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="paperworks-overhead-") as tmp:
        for i in range(args.repeats):
            for name, cmd in VARIANTS.items():
                root = Path(tmp) / f"{name}-{i}"
                root.mkdir()
                shutil.copy(REPO / "params.yaml", root / "params.yaml")
                try:
                    runs[name].append(_once(cmd, root))
                except (RuntimeError, subprocess.TimeoutExpired) as err:
                    print(f"error: {err}", file=sys.stderr)
                    return 1
                r = runs[name][-1]
                print(f"[{i + 1}/{args.repeats}] {name}: wall {r['wall_s']:.2f} s, stage {r['stage_s']:.2f} s, "
                      f"overhead {r['overhead_s']:.2f} s", flush=True)
    summary = {name: {f"{key}_median": statistics.median(r[key] for r in rs) for key in rs[0]}
               for name, rs in runs.items()}
    result = {"stage": " ".join(STAGE), "repeats": args.repeats, "cores": os.cpu_count(),
              "commands": {k: " ".join(v[1:]) for k, v in VARIANTS.items()}, "runs": runs, "summary": summary,
              "overhead_saved_s_median": summary["default_gc"]["overhead_s_median"]
              - summary["cli"]["overhead_s_median"],
              "overhead_ratio_default_over_cli": summary["default_gc"]["overhead_s_median"]
              / summary["cli"]["overhead_s_median"]}
    with atomic_file(args.out) as fh:
        fh.write(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
