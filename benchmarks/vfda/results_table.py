"""Print the README tables of components/vfda from metrics/vfda.json (the vfda_evaluate stage's output).

    .venv/bin/python benchmarks/vfda/results_table.py [metrics/vfda.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from components.base import InputError  # noqa: E402
from components.io import read_json_record  # noqa: E402
from components.vfda.evaluation import variant_label  # noqa: E402


def load_metrics(path: Path) -> dict:
    """metrics/vfda.json as the vfda_evaluate stage writes it; InputError (a ValueError) with the file and
    what is expected when it is missing, not JSON or lacks the table's sections."""
    what = "the metrics/vfda.json that `python -m flows vfda evaluate` writes"
    m = read_json_record(path, ("vfda_rule", "seeds", "rounds", "profile", "dice", "gain", "timing"), what)
    if not isinstance(m["dice"], dict) or not m["dice"] or not all(isinstance(v, dict) and v for v in m["dice"].values()):
        raise InputError(f"{path}: 'dice' has no strategy with variants; expected {what}")
    return m


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics", nargs="?", type=Path, default=ROOT / "metrics" / "vfda.json",
                    help="the vfda_evaluate stage's metrics (default: metrics/vfda.json of this checkout)")
    a = ap.parse_args(argv)
    try:
        m = load_metrics(a.metrics)
    except ValueError as err:
        print(f"results_table: {err}", file=sys.stderr)
        return 2
    rule = m["vfda_rule"]
    insts = list(next(iter(next(iter(m["dice"].values())).values()))["per_institute"])
    print(f"Dice (%), mean over {m['seeds']} seeds; held-in = macro mean of the institutes' local test sets; "
          f"{m['rounds']} rounds; profile {m['profile']}")
    print()
    print("| method | " + " | ".join(insts) + " | held-in | held-out |")
    print("|---|" + "---|" * (len(insts) + 2))
    for strategy, variants in m["dice"].items():
        order = sorted(variants, key=lambda v: (["base", "mixup", "vfda"].index(v) if v in ("base", "mixup", "vfda") else 3, v))
        for v in order:
            d = variants[v]
            cells = [f"{100 * d['per_institute'][i]:.2f}" for i in insts]
            print(f"| {variant_label(strategy, v, rule)} | " + " | ".join(cells) +
                  f" | {100 * d['held_in']:.2f} ± {100 * d['held_in_std']:.2f} | {100 * d['held_out']:.2f} ± {100 * d['held_out_std']:.2f} |")
    print()
    print("| vs. base strategy | Δ held-in (pp) | seeds improved | Δ held-out (pp) | seeds improved |")
    print("|---|---|---|---|---|")
    for strategy, variants in m["gain"].items():
        for v, g in variants.items():
            print(f"| {variant_label(strategy, v, rule)} | {100 * g['held_in']:+.2f} ± {100 * g['held_in_std']:.2f} | "
                  f"{g['held_in_seeds_improved']}/{g['seeds']} | {100 * g['held_out']:+.2f} ± {100 * g['held_out_std']:.2f} | "
                  f"{g['held_out_seeds_improved']}/{g['seeds']} |")
    print()
    t = m["timing"]
    print("timing (s):", json.dumps({k: round(v, 1) for k, v in t.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
