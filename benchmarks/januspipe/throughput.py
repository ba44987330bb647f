"""JanusPipe's throughput table: every four-phase schedule simulated at 2..32 devices from phase
costs measured on this machine, at the same memory budget (1F1B-4's peak with cap = D); every
list-scheduled family is tuned over its fixed in-flight caps *and* the byte-level budget admission
(``admission=budget``, as the flow does), plus an ablation row per budget-admitted baseline placement.

Costs come from ``results/januspipe/profile/costs.json`` (``python -m flows januspipe profile``), or
the file ``--costs``; without either file, or with ``--measure``, they are measured here (one process,
one thread, on ``data/mlip``). Writes ``benchmarks/results/januspipe_throughput.json`` (or ``--out``)
and prints markdown tables. A missing or malformed costs file or data exits with status 2, naming it.

    .venv/bin/python benchmarks/januspipe/throughput.py [--devices 2 4 8 16 32] [--factors 1 2 4] [--measure]
        [--costs results/januspipe/profile/costs.json] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks._cli import fail, output_file, positive_int  # noqa: E402

COSTS_WHAT = ("the costs.json that `python -m flows januspipe profile` writes (run it, or `dvc repro "
              "januspipe_profile`, or pass --measure)")
#: the keys of costs.json and of its 'cost_model' that :func:`components.januspipe.profiler.cost_model` reads
COSTS_KEYS = ("cost_model", "latency_s", "bandwidth_Bps")
PHASE_KEYS = ("block_s", "stage_overhead_s", "first_extra_s", "last_extra_s")
BYTES_KEYS = ("block_act_forward_bytes", "block_act_force_bytes", "stage_act_forward_bytes",
              "stage_act_force_bytes", "state_bytes", "geo_bytes")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def read_costs(path: Path) -> dict:
    """costs.json, checked for what the cost model reads; InputError naming the file and the bad key."""
    from components.base import InputError
    from components.io import read_json_record

    c = read_json_record(path, COSTS_KEYS, COSTS_WHAT)
    cm = c["cost_model"]
    if not isinstance(cm, dict):
        raise InputError(f"{path}: 'cost_model' is {cm!r}; expected a JSON object, in {COSTS_WHAT}")
    missing = [f"cost_model.{k}" for k in (*PHASE_KEYS, *BYTES_KEYS, "structures_per_microbatch") if k not in cm]
    if missing:
        raise InputError(f"{path}: keys {missing} missing; expected {COSTS_WHAT}")
    bad = [f"cost_model.{k}={cm[k]!r}" for k in PHASE_KEYS
           if not (isinstance(cm[k], list) and len(cm[k]) == 4 and all(map(_number, cm[k])))]
    bad += [f"cost_model.{k}={cm[k]!r}" for k in BYTES_KEYS if not _number(cm[k])]
    spm = cm["structures_per_microbatch"]
    if not (isinstance(spm, int) and not isinstance(spm, bool) and spm >= 1):
        bad.append(f"cost_model.structures_per_microbatch={spm!r}")
    bad += [f"{k}={c[k]!r}" for k in COSTS_KEYS[1:] if not _number(c[k])]
    if not bad and c["bandwidth_Bps"] <= 0:
        bad.append(f"bandwidth_Bps={c['bandwidth_Bps']!r}")
    if bad:
        raise InputError(f"{path}: {', '.join(bad)}; expected finite numbers >= 0 (four per phase list, a "
                         f"positive bandwidth, an integer structures_per_microbatch >= 1), in {COSTS_WHAT}")
    return c


def _costs(measure: bool, path: Path | None):
    """(cost model, raw record, source). ``path`` None: the profile stage's costs.json when it exists,
    else measured here; an explicit ``path`` must hold a valid costs file."""
    from components.base import InputError
    from components.januspipe.profiler import cost_model, profile_machine

    default = ROOT / "results" / "januspipe" / "profile" / "costs.json"
    if not measure and (path is not None or default.exists()):
        path = path or default
        c = read_costs(path)
        source = str(path.relative_to(ROOT)) if path.is_absolute() and path.is_relative_to(ROOT) else str(path)
        return cost_model(c, c["latency_s"], c["bandwidth_Bps"]), c, source
    from components.januspipe.config import JanuspipeConfig
    from components.mlip.data import load_split

    data = ROOT / "data" / "mlip"
    try:
        structs = load_split(data, "train")
    except InputError as err:
        why = "--measure" if measure else f"no {default}"
        raise InputError(f"{err} ({why}: the phase costs are measured on {data}; run `python -m flows januspipe "
                         f"data` or `dvc repro januspipe_data` first, or `python -m flows januspipe profile` "
                         f"and drop --measure)") from None
    c = profile_machine(JanuspipeConfig(), structs)
    lat, bw = c["latency_s"], c["bandwidth_Bps"]
    return cost_model(c, lat, bw), c, "measured by this benchmark"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=positive_int, nargs="+", default=[2, 4, 8, 16, 32])
    p.add_argument("--factors", type=positive_int, nargs="+", default=[2], help="M = factor x devices")
    p.add_argument("--blocks", type=positive_int, default=128, help="blocks of the simulated model")
    p.add_argument("--no-ablation", action="store_true", help="skip the budget-admission ablation")
    p.add_argument("--measure", action="store_true", help="measure phase costs instead of reading them")
    p.add_argument("--costs", type=Path, default=None,
                   help="phase costs to read (default: results/januspipe/profile/costs.json of this checkout; "
                        "measured here when that file does not exist)")
    p.add_argument("--out", type=output_file, default=ROOT / "benchmarks" / "results" / "januspipe_throughput.json")
    args = p.parse_args(argv)
    if args.measure and args.costs is not None:
        p.error(f"--costs {args.costs} with --measure: expected one of them (read the costs or measure them)")
    if args.blocks < 2 * max(args.devices):
        p.error(f"--blocks {args.blocks}: the V-fold schedules need 2 x devices stages (one block each); "
                f"expected --blocks >= {2 * max(args.devices)} for --devices {max(args.devices)}")

    from components.base import ConfigError, InputError

    try:
        return _run(args)
    except (ConfigError, InputError) as err:
        return fail(err)


def _run(args: argparse.Namespace) -> int:
    from components.io import atomic_file
    from components.januspipe.schedules import SCHEDULE_NAMES, depth_first, linear, wave
    from components.januspipe.simulator import budget_admission, canonical_1f1b_budget, simulate, tune

    costs, raw, source = _costs(args.measure, args.costs)
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
    with atomic_file(args.out) as fh:
        fh.write(json.dumps(out, indent=2) + "\n")
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
