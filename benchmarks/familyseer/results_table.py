"""Print the README tables of components/familyseer from the evaluate stage's outputs.

    .venv/bin/python benchmarks/familyseer/results_table.py [metrics/familyseer.json] [plots/familyseer/per_model.json]

Both paths default to the files of this checkout (whatever the current folder).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from components.base import InputError  # noqa: E402
from benchmarks._cli import print_table  # noqa: E402
from components.io import read_json_record  # noqa: E402

WHAT = "the metrics/familyseer.json that the familyseer evaluate stage writes (`dvc repro familyseer_evaluate`)"
KEYS = ("profile", "search_speedup", "final_latency", "cost_model", "timing", "latency")
PER_WHAT = ("the plots/familyseer/per_model.json that the familyseer evaluate stage writes, one object per model "
            "with keys ['tasks', 'budget', 'speedup', 'final_latency_us', 'latency', 'cost_model']")
PER_KEYS = ("tasks", "budget", "speedup", "final_latency_us", "latency", "cost_model")


def load_inputs(metrics: Path, per_model: Path) -> tuple[dict, dict]:
    """The two records the tables read; InputError naming the file, what it holds and what is expected."""
    m = read_json_record(metrics, KEYS, WHAT)
    for key in KEYS[1:]:
        if not isinstance(m[key], dict):
            raise InputError(f"{metrics}: '{key}' is {m[key]!r}; expected a JSON object, in {WHAT}")
    per = read_json_record(per_model, (), PER_WHAT)
    if not per:
        raise InputError(f"{per_model}: an empty JSON object (no model); expected {PER_WHAT}")
    for model, d in per.items():
        if not isinstance(d, dict):
            raise InputError(f"{per_model}: model {model!r} is {d!r}; expected {PER_WHAT}")
        missing = [k for k in PER_KEYS if k not in d]
        if missing:
            raise InputError(f"{per_model}: model {model!r} lacks keys {missing}; expected {PER_WHAT}")
    return m, per


def f(v, fmt="{:.3g}"):
    if isinstance(v, list):
        return "[" + ", ".join(f(x, fmt) for x in v) + "]"
    return "—" if v is None else (fmt.format(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics", nargs="?", type=Path, default=ROOT / "metrics" / "familyseer.json",
                    help="the evaluate stage's metrics (default: metrics/familyseer.json of this checkout)")
    ap.add_argument("per_model", nargs="?", type=Path, default=ROOT / "plots" / "familyseer" / "per_model.json",
                    help="its per-model record (default: plots/familyseer/per_model.json of this checkout)")
    a = ap.parse_args(argv)
    return print_table(lambda: load_inputs(a.metrics, a.per_model), lambda mp: render(*mp),
                       f"{a.metrics} / {a.per_model}", f"{WHAT} and {PER_WHAT}")


def render(m: dict, per: dict) -> None:
    print(f"profile: {m['profile']}\n")
    print("**Search-time speed-up over `gradient`** (seed-mean curves, cut at the budget; `>` = never reached)\n")
    print("| model | tasks | budget | policy | baseline trials to its final latency | policy trials | speed-up (trials) | 90 % interval, seeds resampled | speed-up (wall) | at 90 % (trials) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model, d in per.items():
        for key, s in d["speedup"].items():
            if key.endswith("_at90"):
                continue
            s90 = d["speedup"].get(f"{key}_at90", {})
            mt = s["method_trials"] if s["reached"] else f"> {d['budget']}"
            ci = d.get("speedup_ci90", {}).get(key)
            ci = f"{ci[0]:.2f}-{ci[1]:.2f}" if ci else "—"
            print(f"| {model} | {d['tasks']} | {d['budget']} | {key} | {s['baseline_trials']} | {mt} | "
                  f"{f(s['speedup_trials'], '{:.2f}')} | {ci} | {f(s['speedup_wall'], '{:.2f}')} | {f(s90.get('speedup_trials'), '{:.2f}')} |")
    print("\n**Per-seed speed-up over `gradient`** (each seed's policy run against the baseline run of the same "
          "seed; `<` = the policy's run never reached that baseline run's final latency: an upper bound)\n")
    print("| model | policy | seed | speed-up (trials) | speed-up (wall) |")
    print("|---|---|---|---|---|")
    for model, d in per.items():
        for key, seeds in d.get("speedup_per_seed", {}).items():
            names = d.get("seeds") or list(range(len(seeds)))
            for seed, s in zip(names, seeds):
                bound = "" if s is None or s.get("reached") else "< "
                trials = "—" if s is None else bound + f(s.get("trials"), "{:.2f}")
                wall = "—" if s is None else bound + f(s.get("wall"), "{:.2f}")
                print(f"| {model} | {key} | {seed} | {trials} | {wall} |")
    print("\n**Final best weighted latency at the budget** (tuning estimate, mean of seeds, us)\n")
    pols = sorted({p for d in per.values() for p in d["final_latency_us"]})
    print("| model | " + " | ".join(pols) + " |")
    print("|---" * (len(pols) + 1) + "|")
    for model, d in per.items():
        print(f"| {model} | " + " | ".join(f(d["final_latency_us"].get(p), "{:.1f}") for p in pols) + " |")
    print("\n**End-to-end latency** (Relax VM / PyTorch eager, p50 ms; tuned = median over seeds)\n")
    print("| model | build | p50 (ms) | p99 (ms) | vs untuned | vs PyTorch |")
    print("|---|---|---|---|---|---|")
    for model, d in per.items():
        for build, v in d["latency"].items():
            print(f"| {model} | {build} | {f(v.get('latency_ms_p50'), '{:.3f}')} | {f(v.get('latency_ms_p99'), '{:.3f}')} | "
                  f"{f(v.get('speedup_vs_untuned'), '{:.1f}x')} | {f(v.get('speedup_vs_pytorch'), '{:.2f}x')} |")
    print("\n**Cost-model ranking quality** (held-out pairwise accuracy, leave-one-seed-out)\n")
    print("| model | op family | members | held-out pairs | global model | family model | gain (points), 90 % interval |")
    print("|---|---|---|---|---|---|---|")
    for model, d in per.items():
        for fam, r in d["cost_model"]["families"].items():
            ci = r.get("gain_pp_ci90")  # absent in metrics written before 2026-11-29
            print(f"| {model} | {fam} | {len(r['members'])} | {r['pairs']} | {f(r['global_accuracy'], '{:.3f}')} | "
                  f"{f(r['family_accuracy'], '{:.3f}')} | "
                  f"{'—' if not ci else f'{ci[0]:+.2f} to {ci[1]:+.2f}'} |")
    print("\n**Headline metrics**\n")
    for k in ("search_speedup", "final_latency", "cost_model", "timing"):
        flat = {kk: vv for kk, vv in m[k].items() if not isinstance(vv, dict)}
        print(f"- {k}: " + ", ".join(f"{kk} = {f(vv)}" for kk, vv in flat.items()))
    print(f"- latency.speedup_tuned_vs_untuned_min = {f(m['latency']['speedup_tuned_vs_untuned_min'])}")


if __name__ == "__main__":
    sys.exit(main())
