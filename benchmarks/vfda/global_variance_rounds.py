"""The server's inter-institute variance (Eq. 4) in every round of the committed VFDA federations.

``perturbation_strength.py`` measures how much a VFDA layer perturbs the features with the server's
variance after round 1. The server recomputes that variance every round, and each VFDA federation's
``history.json`` records its channel mean per VFDA layer and statistic (``global_var_mean``; written
by ``components.vfda.strategy``). This reads those records and reports, per layer and statistic
(mu: channel means, sigma: channel stds), the range over federations and rounds, split into round 1
and rounds >= 2, plus ``sqrt`` of the values: with the ``product`` rule (Σ̂² = Σ²_global · Σ²_local)
the sampled spread is the round-1 (Σ²_global = 1) spread times about ``sqrt(Σ²_global)`` (exactly so
for a channel-constant Σ²_global; the channel mean is used here).

    .venv/bin/python benchmarks/vfda/global_variance_rounds.py \\
        --out benchmarks/results/vfda_global_variance_rounds.json

Reads ``results/vfda/federate/federations/*/history.json`` (``dvc repro vfda_federate``); no training.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks._cli import output_file  # noqa: E402


def _layer_name(key: str) -> tuple[str, str]:
    """('model.1.submodule.0.1', 'mu') from 'model.1.submodule.0.1.global_var_mu'."""
    base, _, stat = key.rpartition(".global_var_")
    return base, stat


def collect(folder: Path) -> dict[str, dict[str, list[tuple[str, int, float]]]]:
    """``rule -> key -> [(federation, round, value)]`` over every history in ``folder`` that has a
    recorded global variance; ValueError naming a malformed history."""
    out: dict[str, dict[str, list[tuple[str, int, float]]]] = {}
    for path in sorted(folder.glob("*/history.json")):
        try:
            h = json.loads(path.read_text())
            rounds = h["rounds"]
            name, rule = str(h["federation"]), str(h.get("vfda_rule") or "none")
            for r in rounds:
                for key, value in (r.get("global_var_mean") or {}).items():
                    out.setdefault(rule, {}).setdefault(key, []).append((name, int(r["round"]), float(value)))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{path}: malformed federation history ({type(err).__name__}: {err}); expected "
                             f"the history.json the vfda federate stage writes") from None
    return out


def summarise(records: dict[str, list[tuple[str, int, float]]]) -> list[dict]:
    rows = []
    layers = sorted({_layer_name(k)[0] for k in records}, key=lambda s: (len(s), s))
    for depth, layer in enumerate(layers):
        for stat in ("mu", "sigma"):
            vals = records.get(f"{layer}.global_var_{stat}", [])
            first = [v for _, r, v in vals if r == 1]
            later = [v for _, r, v in vals if r >= 2]
            if not vals:
                continue
            rows.append({"layer": layer, "depth": depth, "stat": stat,
                         "federations": len({f for f, _, _ in vals}), "rounds": max(r for _, r, _ in vals),
                         "round1_min": min(first) if first else None, "round1_max": max(first) if first else None,
                         "later_min": min(later) if later else None, "later_max": max(later) if later else None,
                         "later_factor_min": math.sqrt(min(later)) if later else None,
                         "later_factor_max": math.sqrt(max(later)) if later else None})
    return rows


def _span(lo: float | None, hi: float | None, digits: int) -> str:
    """``lo-hi``, or an em dash where the records have no value (e.g. no round >= 2)."""
    return "—" if lo is None or hi is None else f"{lo:.{digits}f}-{hi:.{digits}f}"


def render(result: dict[str, list[dict]]) -> str:
    """The markdown tables of :func:`summarise`'s rows, per rule, built whole before anything is printed."""
    lines = []
    for rule, rows in result.items():
        if not rows:
            lines.append(f"\nrule {rule}: no record named <layer>.global_var_mu or <layer>.global_var_sigma")
            continue
        last = max(r["rounds"] for r in rows)
        later = f"rounds 2-{last}" if last >= 2 else "rounds >= 2"
        lines += [f"\nrule {rule}: Σ²_global (channel mean), range over {max(r['federations'] for r in rows)} "
                  "federations",
                  f"| VFDA layer (encoder stage) | statistic | round 1 | {later} | sqrt, {later} |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['depth'] + 1} | {r['stat']} | {_span(r['round1_min'], r['round1_max'], 4)} | "
                  f"{_span(r['later_min'], r['later_max'], 4)} | "
                  f"{_span(r['later_factor_min'], r['later_factor_max'], 3)} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--federations", type=Path, default=ROOT / "results" / "vfda" / "federate" / "federations",
                    help="folder of federation folders, each with a history.json")
    ap.add_argument("--out", type=output_file, default=None, help="write the JSON result here")
    a = ap.parse_args(argv)
    if not a.federations.is_dir():
        ap.error(f"--federations {a.federations}: not a folder; expected the vfda federate stage's "
                 f"results/vfda/federate/federations (dvc repro vfda_federate)")
    try:
        by_rule = collect(a.federations)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not by_rule:
        print(f"error: {a.federations}: no history.json with a recorded global variance (global_var_mean); "
              f"expected VFDA federations", file=sys.stderr)
        return 2
    result = {rule: summarise(records) for rule, records in sorted(by_rule.items())}
    print(render(result), end="")
    if a.out is not None:
        from tasks.io import write_json

        write_json(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
