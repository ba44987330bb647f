"""Compare every paper's claims between two checkouts' ``metrics/*.json`` (e.g. your ``make repro``
against the committed run): one row per claim with both measured values and verdicts.

    .venv/bin/python benchmarks/compare_runs.py /path/to/other/checkout            # this checkout vs that one
    .venv/bin/python benchmarks/compare_runs.py OTHER --root BASE --only-differing

Claims and targets come from this checkout's ``components/<paper>/claims.yaml`` (the same judging as
``reports/README.md``). ``same`` is "yes" when both metrics files hold exactly the same value (a
deterministic stage reproduced bit for bit; a metric missing from both is not "same"); timings and
load-dependent measurements will differ. Exit status 2 when a metrics file is missing, not a JSON
object, or a paper given with ``--papers`` has no claims.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._cli import papers_with_claims  # noqa: E402
from components.base import InputError  # noqa: E402
from tasks.report import ReportError, _fmt, _read_metrics, claim_rows, load_claims  # noqa: E402


def _metrics(root: Path, paper: str) -> dict[str, Any]:
    path = root / "metrics" / f"{paper}.json"
    if not path.exists():
        raise ReportError(f"{path} not found; run that paper's stages in {root} first")
    return _read_metrics(path)      # InputError naming the file: a folder, unreadable, not JSON, not an object


def compare(base: Path, other: Path, papers: list[str], claims_root: Path = REPO) -> list[dict[str, Any]]:
    """One row per claim of ``papers`` (claims from ``claims_root``), judged on both checkouts' metrics."""
    rows = []
    for paper in papers:
        claims = load_claims(paper, claims_root)
        if not claims:
            continue
        a = claim_rows(claims, _metrics(base, paper))
        b = claim_rows(claims, _metrics(other, paper))
        for ra, rb in zip(a, b):
            rows.append({"paper": paper, "claim": ra["id"], "target": ra["target"],
                         "base": ra["measured"], "base_met": ra["met"],
                         "other": rb["measured"], "other_met": rb["met"],
                         "same": ra["measured"] is not None and ra["measured"] == rb["measured"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("other", type=Path, help="the other checkout (its metrics/*.json)")
    p.add_argument("--root", type=Path, default=REPO, help="the base checkout (default: this one)")
    p.add_argument("--papers", nargs="*", default=None, help="papers to compare (default: every claims.yaml)")
    p.add_argument("--only-differing", action="store_true", help="print only claims whose verdict differs")
    args = p.parse_args(argv)
    known = papers_with_claims(REPO)
    unknown = [p for p in args.papers or [] if p not in known]
    if unknown:
        print(f"error: --papers {' '.join(unknown)}: no components/<paper>/claims.yaml; expected papers from "
              f"{known}", file=sys.stderr)
        return 2
    papers = list(dict.fromkeys(args.papers or known))
    for name, root in (("other", args.other), ("--root", args.root)):
        if not (root / "metrics").is_dir():
            print(f"error: {name}={root}: no metrics/ folder there; expected a checkout that ran `make repro`",
                  file=sys.stderr)
            return 2
    try:
        rows = compare(args.root.resolve(), args.other.resolve(), papers)
    except InputError as err:                     # ReportError included
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"base: {args.root.resolve()}  other: {args.other.resolve()}\n")
    print("| paper | claim | target | base | met | other | met | same value |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if args.only_differing and r["base_met"] == r["other_met"]:
            continue
        print(f"| {r['paper']} | {r['claim']} | {r['target']} | {_fmt(r['base'])} | {_fmt(r['base_met'])} "
              f"| {_fmt(r['other'])} | {_fmt(r['other_met'])} | {'yes' if r['same'] else 'no'} |")
    judged = [r for r in rows if r["base_met"] is not None and r["other_met"] is not None]
    flips = sum(r["base_met"] != r["other_met"] for r in judged)
    same = sum(r["same"] for r in rows)
    one_sided = len(rows) - len(judged)
    print(f"\n{len(rows)} claims: {same} identical values, {flips} verdicts differ"
          + (f" ({one_sided} claims not judged in both runs: a metric one of them lacks, such as one added "
             f"after it ran, or no target)" if one_sided else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
