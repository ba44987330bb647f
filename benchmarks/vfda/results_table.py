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

from benchmarks._cli import print_table  # noqa: E402
from components.base import InputError  # noqa: E402
from components.io import read_json_record  # noqa: E402
from components.vfda.evaluation import variant_label  # noqa: E402

WHAT = "the metrics/vfda.json that `python -m flows vfda evaluate` writes"
KEYS = ("vfda_rule", "seeds", "rounds", "profile", "dice", "gain", "timing")
DICE = ("a JSON object with numbers 'held_in', 'held_in_std', 'held_out', 'held_out_std' and "
        "'per_institute' (institute -> number, the same institutes in every entry)")
GAIN = ("a JSON object with numbers 'held_in', 'held_in_std', 'held_out', 'held_out_std', "
        "'held_in_seeds_improved', 'held_out_seeds_improved' and 'seeds' (and, since 2026-11-29, "
        "'held_in_ci90' / 'held_out_ci90': [low, high])")


def load_metrics(path: Path) -> dict:
    """metrics/vfda.json as the vfda_evaluate stage writes it; InputError (a ValueError) with the file and
    what is expected when it is missing, not JSON or lacks the table's sections."""
    m = read_json_record(path, KEYS, WHAT)
    if not isinstance(m["dice"], dict) or not m["dice"] or not all(isinstance(v, dict) and v for v in m["dice"].values()):
        raise InputError(f"{path}: 'dice' has no strategy with variants; expected {WHAT}")
    for key in ("gain", "timing"):
        if not isinstance(m[key], dict):
            raise InputError(f"{path}: '{key}' is {m[key]!r}; expected a JSON object, in {WHAT}")
    return m


def _entry(path: Path, where: str, expected: str, row):
    """``row()`` (one table row's text); a malformed entry (a key missing, a value of the wrong type) is an
    InputError naming the file and the entry."""
    try:
        return row()
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise InputError(f"{path}: entry {where} is malformed ({type(err).__name__}: {err}); expected "
                         f"{expected}, in {WHAT}") from None


def _interval(ci) -> str:
    """A gain's 90 % interval in pp; "—" for metrics written before the evaluate stage recorded it."""
    if ci is None:
        return "—"
    lo, hi = ci                                              # a malformed entry: _entry names it
    return f"{100 * lo:+.2f} to {100 * hi:+.2f}"


def render(path: Path, m: dict) -> None:
    rule = m["vfda_rule"]
    first_strategy, first_variants = next(iter(m["dice"].items()))
    first_variant = next(iter(first_variants))
    insts = _entry(path, f"dice.{first_strategy}.{first_variant}", DICE,
                   lambda: list(first_variants[first_variant]["per_institute"]))
    print(f"Dice (%), mean over {m['seeds']} seeds; held-in = macro mean of the institutes' local test sets; "
          f"{m['rounds']} rounds; profile {m['profile']}")
    print()
    print("| method | " + " | ".join(insts) + " | held-in | held-out |")
    print("|---|" + "---|" * (len(insts) + 2))
    for strategy, variants in m["dice"].items():
        order = sorted(variants, key=lambda v: (["base", "mixup", "vfda"].index(v) if v in ("base", "mixup", "vfda") else 3, v))
        for v in order:
            d = variants[v]
            print(_entry(path, f"dice.{strategy}.{v}", DICE, lambda: (
                f"| {variant_label(strategy, v, rule)} | " + " | ".join(f"{100 * d['per_institute'][i]:.2f}" for i in insts) +
                f" | {100 * d['held_in']:.2f} ± {100 * d['held_in_std']:.2f} | {100 * d['held_out']:.2f} ± {100 * d['held_out_std']:.2f} |")))
    print()
    print("| vs. base strategy | Δ held-in (pp) | 90 % interval | seeds improved | Δ held-out (pp) | 90 % interval | "
          "seeds improved |")
    print("|---|---|---|---|---|---|---|")
    for strategy, variants in m["gain"].items():
        items = _entry(path, f"gain.{strategy}", "a JSON object of variants", lambda: list(variants.items()))
        for v, g in items:
            print(_entry(path, f"gain.{strategy}.{v}", GAIN, lambda: (
                f"| {variant_label(strategy, v, rule)} | {100 * g['held_in']:+.2f} ± {100 * g['held_in_std']:.2f} | "
                f"{_interval(g.get('held_in_ci90'))} | {g['held_in_seeds_improved']}/{g['seeds']} | "
                f"{100 * g['held_out']:+.2f} ± {100 * g['held_out_std']:.2f} | {_interval(g.get('held_out_ci90'))} | "
                f"{g['held_out_seeds_improved']}/{g['seeds']} |")))
    print()
    timing = _entry(path, "timing", "a JSON object of stage -> seconds",
                    lambda: json.dumps({k: round(v, 1) for k, v in m["timing"].items()}))
    print("timing (s):", timing)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics", nargs="?", type=Path, default=ROOT / "metrics" / "vfda.json",
                    help="the vfda_evaluate stage's metrics (default: metrics/vfda.json of this checkout)")
    a = ap.parse_args(argv)
    return print_table(lambda: load_metrics(a.metrics), lambda m: render(a.metrics, m), str(a.metrics), WHAT)


if __name__ == "__main__":
    sys.exit(main())
