"""JanusPipe's throughput table: every four-phase schedule simulated at 2..32 devices from phase
costs measured on this machine, at the same memory budget (1F1B-4's peak with cap = D); every
list-scheduled family is tuned over its fixed in-flight caps *and* the byte-level budget admission
(``admission=budget``, as the flow does), plus an ablation row per budget-admitted baseline placement.

Costs come from ``results/januspipe/profile/costs.json`` (``python -m flows januspipe profile``);
``--measure`` re-measures them here (one process, one thread). Writes
``benchmarks/results/januspipe_throughput.json`` and prints markdown tables.

    .venv/bin/python benchmarks/januspipe/throughput.py [--devices 2 4 8 16 32] [--factors 1 2 4] [--measure]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def _costs(measure: bool):
    from components.januspipe.profiler import cost_model, profile_machine

    path = ROOT / "results" / "januspipe" / "profile" / "costs.json"
    if not measure and path.is_file():
        c = json.loads(path.read_text())
        return cost_model(c, c["latency_s"], c["bandwidth_Bps"]), c, str(path.relative_to(ROOT))
    from components.januspipe.config import JanuspipeConfig
    from components.mlip.data import load_split

    c = profile_machine(JanuspipeConfig(), load_split(ROOT / "data" / "mlip", "train"))
    lat, bw = c["latency_s"], c["bandwidth_Bps"]
    return cost_model(c, lat, bw), c, "measured by this benchmark"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    p.add_argument("--factors", type=int, nargs="+", default=[2], help="M = factor x devices")
    p.add_argument("--blocks", type=int, default=128, help="blocks of the simulated model")
    p.add_argument("--no-ablation", action="store_true", help="skip the budget-admission ablation")
    p.add_argument("--measure", action="store_true", help="measure phase costs instead of reading them")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "januspipe_throughput.json"))
    args = p.parse_args()
    if min(args.devices) < 1 or min(args.factors) < 1:
        p.error(f"--devices {args.devices} --factors {args.factors}: expected every value >= 1")
    if args.blocks < 2 * max(args.devices):
        p.error(f"--blocks {args.blocks}: the V-fold schedules need 2 x devices stages (one block each); "
                f"expected --blocks >= {2 * max(args.devices)} for --devices {max(args.devices)}")

    from components.januspipe.schedules import SCHEDULE_NAMES, depth_first, linear, wave
    from components.januspipe.simulator import budget_admission, canonical_1f1b_budget, simulate, tune

    costs, raw, source = _costs(args.measure)
    nb = args.blocks
    spm = costs.structures_per_microbatch
    rows = []
    t0 = time.perf_counter()
    for f in args.factors:
        for D in args.devices:
            M = f * D
            budget = canonical_1f1b_budget(D, M, costs, nb)
            base = {}
            for name in SCHEDULE_NAMES:
                tuned = tune(name, D, M, costs, nb, None if name == "gpipe4" else budget)
                if tuned.best is None:
                    continue
                base[name] = tuned.best
                rows.append({**tuned.best.row(spm), "factor": f, "variant": "own admission",
                             "budget_MiB": budget / 2**20})
            if not args.no_ablation:
                for name, pl in (("1f1b4", linear(D)), ("hanayo4", wave(D, 1)), ("hanayo4", wave(D, 2))):
                    if pl.num_stages > nb:
                        continue
                    sched = budget_admission(name, pl, M, costs, nb, depth_first, budget,
                                             params={"placement": pl.name})
                    res = simulate(sched, costs, nb)
                    rows.append({**res.row(spm), "factor": f, "variant": "budget admission (ablation)",
                                 "budget_MiB": budget / 2**20})
            ref = base["1f1b4"].throughput(spm)
            for r in rows:
                if r["devices"] == D and r["factor"] == f:
                    r["speedup_vs_1f1b4"] = r["throughput_structures_per_s"] / ref
            print(f"M = {f} x D, D = {D}: done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    out = {"machine": platform.platform(), "processor": platform.processor(), "cost_source": source,
           "phase_ratio_vs_P1": raw.get("phase_ratio_vs_P1"), "blocks": nb, "rows": rows,
           "seconds": time.perf_counter() - t0}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    cols = ["devices", "factor", "schedule", "variant", "params", "throughput_structures_per_s", "speedup_vs_1f1b4",
            "bubble_ratio", "peak_activation_MiB", "budget_MiB"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r.get(c):.3g}" if isinstance(r.get(c), float) else str(r.get(c)) for c in cols) + " |")
    print(f"\nwritten {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
