"""Print the README tables of components/har from metrics/har.json (the har_evaluate stage's output).

    .venv/bin/python benchmarks/har/results_table.py [metrics/har.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from components.base import InputError  # noqa: E402
from benchmarks._cli import print_table  # noqa: E402
from components.io import read_json_record  # noqa: E402

WHAT = "the metrics/har.json that the har_evaluate stage writes (`dvc repro har_evaluate`)"
KEYS = ("accuracy", "latency", "stream", "imfe", "teacher", "profile_seconds", "accuracy_points")
SOURCES = [("tvl1", "TV-L1 + flow CNN (the standard pipeline)"), ("farneback", "Farnebäck + flow CNN"),
           ("dis", "DIS + flow CNN"), ("imfe", "IMFE (latency: onnxruntime)"), ("rgb", "RGB only")]


def load_metrics(path: Path) -> dict:
    """metrics/har.json; InputError naming the file when it is missing, not JSON or lacks the table's keys."""
    m = read_json_record(path, KEYS, WHAT)
    for key in ("accuracy", "latency"):
        if not isinstance(m[key], dict) or not m[key]:
            raise InputError(f"{path}: '{key}' is {m[key]!r}; expected a non-empty JSON object, in {WHAT}")
    return m


def render(m: dict) -> None:
    acc = m["accuracy"]; lat = m["latency"]; st = m["stream"]
    print("| motion source | online accuracy, per clip (%) | continuous stream (%) | clip accuracy (%) | motion feature per chunk, p50 (ms) |")
    print("|---|---|---|---|---|")
    for s, name in SOURCES:
        if s not in acc: continue
        a = acc[s]
        ms = lat["imfe_ms_p50"] if s == "imfe" else lat.get(f"{s}_feature_ms_p50")   # RGB only: no motion feature
        stream = (f"{100*a['stream_accuracy']:.1f} ± {100*a['stream_accuracy_std']:.1f}" if "stream_accuracy" in a else "—")
        print(f"| {name} | {100*a['online_accuracy']:.1f} ± {100*a['online_accuracy_std']:.1f} | {stream} | "
              f"{100*a['clip_accuracy']:.1f} | {'—' if ms is None else f'{ms:.1f}'} |")
    print()
    print("latency:", json.dumps({k: round(v,3) if isinstance(v,float) else v for k,v in lat.items()}, indent=0))
    print("stream:", json.dumps(st, indent=0))
    print("imfe:", m["imfe"]); print("teacher:", m["teacher"]); print("profile:", m["profile_seconds"]); print("points:", m["accuracy_points"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics", nargs="?", type=Path, default=ROOT / "metrics" / "har.json",
                    help="the har_evaluate stage's metrics (default: metrics/har.json of this checkout)")
    a = ap.parse_args(argv)
    return print_table(lambda: load_metrics(a.metrics), render, str(a.metrics), WHAT)


if __name__ == "__main__":
    sys.exit(main())
