"""How stable is each claim's verdict? Run one paper's whole quick profile N times and judge every run.

Each run is ``python -m flows <paper> all`` in its own scratch project root (``PAPERWORKS_ROOT``, with
this checkout's params.yaml, the code of this checkout; nothing of the checkout's data, metrics or
MLflow store is read or written), one after the other. Every run's ``metrics/<paper>.json`` is judged
against ``components/<paper>/claims.yaml`` as the report does, and the result lists, per claim, each
run's value and verdict, their range and in how many runs the claim was met.

Same code, same parameters, same seeds: what differs between the runs is what the machine measures
(timings, and through them anything a measured time decides, such as which tuning candidates
win), so the spread shows how far one run's verdict can be trusted. Two differences from
``dvc repro``: the stages share one process (``all``), so a time claim counts the interpreter's start-up
once, not once per stage; and nothing is replayed (FamilySeer's tuning is measured afresh in every run).

    .venv/bin/python benchmarks/repeat_runs.py familyseer --runs 5 [--set KEY=VALUE ...] [--out F]

Writes benchmarks/results/repeat_runs_<paper>.json (or --out) after the last run, and a Markdown
table on stdout. A run that fails stops the benchmark (exit 1, its output's tail printed); a bad
argument or ``--set`` exits 2 before or at the first run, with nothing written.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks._cli import output_file, papers_with_claims, positive_int  # noqa: E402
from tasks.report import _fmt, _is_number  # noqa: E402

#: the flows CLI exits 2 on a bad parameter (``--set``) or input; the benchmark passes that on
BAD_INPUT = 2


def run_once(paper: str, root: Path, overrides: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    """``python -m flows <paper> all`` in the scratch project root ``root`` (which holds params.yaml)."""
    env = {**os.environ, "PAPERWORKS_ROOT": str(root), "PYTHONPATH": str(REPO),
           # a scratch root has no dvc.yaml: the flow takes its data from its own data stage ('all'),
           # as inside `dvc repro`, instead of asking DVC for it
           "DVC_STAGE": f"repeat_runs_{paper}"}
    cmd = [sys.executable, "-m", "flows", paper, "all", *[a for o in overrides for a in ("--set", o)]]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)


def judge(paper: str, metrics_path: Path) -> dict[str, dict[str, Any]]:
    """Every claim of ``paper`` judged on one run's metrics file, as the report judges it."""
    from tasks.report import _read_metrics, claim_rows, load_claims

    rows = claim_rows(load_claims(paper, REPO) or {"claims": []}, _read_metrics(metrics_path))
    out = {}
    for r in rows:
        out[r["id"]] = {"measured": r["measured"], "met": r["met"], "target": r["target"]}
        # a claim on an interval's end: its point estimate and interval too (tasks/report.py)
        out[r["id"]].update({k: r[k] for k in ("estimate", "interval") if r.get(k) is not None})
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per claim: the values of the runs, their min / median / max, runs judged and runs met."""
    out: dict[str, dict[str, Any]] = {}
    for claim in runs[0]["claims"] if runs else []:
        values = [r["claims"][claim]["measured"] for r in runs]
        numbers = [v for v in values if _is_number(v)]
        verdicts = [r["claims"][claim]["met"] for r in runs]
        judged = [v for v in verdicts if v is not None]
        out[claim] = {"target": runs[0]["claims"][claim]["target"], "values": values,
                      "min": min(numbers) if numbers else None,
                      "median": statistics.median(numbers) if numbers else None,
                      "max": max(numbers) if numbers else None,
                      "runs_judged": len(judged), "runs_met": sum(judged)}
    return out


def table(paper: str, runs: list[dict[str, Any]], summary: dict[str, dict[str, Any]]) -> str:
    head = "| claim | target | " + " | ".join(f"run {r['run']}" for r in runs) + " | min | median | max | met |"
    lines = [head, "|" + "---|" * (len(runs) + 6)]
    for claim, s in summary.items():
        cells = [f"{_fmt(v)} ({_fmt(r['claims'][claim]['met'])})" for v, r in zip(s["values"], runs)]
        lines.append(f"| {paper}.{claim} | {s['target'] or '—'} | " + " | ".join(cells) +
                     f" | {_fmt(s['min'])} | {_fmt(s['median'])} | {_fmt(s['max'])} | "
                     f"{s['runs_met']} of {s['runs_judged']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    known = papers_with_claims(REPO)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paper", choices=known, help="the paper whose quick profile is repeated")
    ap.add_argument("--runs", type=positive_int, default=3, help="how many runs (default 3)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a parameter override passed to every run (as `python -m flows ... --set`)")
    ap.add_argument("--timeout", type=positive_int, default=3600, help="seconds one run may take (default 3600)")
    ap.add_argument("--out", type=output_file, default=None,
                    help="the JSON result (default: benchmarks/results/repeat_runs_<paper>.json)")
    ap.add_argument("--keep", action="store_true", help="keep each run's scratch root (printed) instead of deleting it")
    args = ap.parse_args(argv)
    out = args.out or REPO / "benchmarks" / "results" / f"repeat_runs_{args.paper}.json"

    from components.io import atomic_file

    runs: list[dict[str, Any]] = []
    for i in range(1, args.runs + 1):
        root = Path(tempfile.mkdtemp(prefix=f"paperworks-repeat-{args.paper}-{i}-"))
        shutil.copy(REPO / "params.yaml", root / "params.yaml")
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        t0 = time.perf_counter()
        print(f"[{i}/{args.runs}] {args.paper}: python -m flows {args.paper} all in {root} ...", flush=True)
        try:
            proc = run_once(args.paper, root, args.overrides, args.timeout)
        except subprocess.TimeoutExpired:
            print(f"error: run {i} took more than --timeout {args.timeout} s; scratch root kept: {root}",
                  file=sys.stderr)
            return 1
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip()[-3000:]
            print(f"error: run {i}: `python -m flows {args.paper} all` exited {proc.returncode}:\n{tail}",
                  file=sys.stderr)
            shutil.rmtree(root, ignore_errors=True)
            return BAD_INPUT if proc.returncode == BAD_INPUT else 1
        claims = judge(args.paper, root / "metrics" / f"{args.paper}.json")
        runs.append({"run": i, "started_utc": started, "wall_s": round(wall, 1), "claims": claims})
        met = sum(1 for c in claims.values() if c["met"])
        judged = sum(1 for c in claims.values() if c["met"] is not None)
        print(f"[{i}/{args.runs}] done in {wall:.0f} s: {met} of {judged} claims met", flush=True)
        if args.keep:
            print(f"    scratch root kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    summary = summarize(runs)
    result = {"paper": args.paper, "runs": len(runs), "overrides": args.overrides, "cores": os.cpu_count(),
              "command": f"python -m flows {args.paper} all (scratch PAPERWORKS_ROOT per run)",
              "per_run": runs, "summary": summary}
    with atomic_file(out) as fh:
        fh.write(json.dumps(result, indent=2) + "\n")
    print()
    print(table(args.paper, runs, summary))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
