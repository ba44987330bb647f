"""Does a robust estimate of the profile's phase costs make the simulator's out-of-sample prediction better?

The ``pipeline`` stage predicts each real pipelined run from the ``profile`` stage's phase costs
(``simulator.max_abs_error_profile_costs``, out of sample). This VM's CPU runs slower in spells of a
few seconds (``benchmarks/cpu_speed_states.py``), so a profile or a real step can land in a slow spell.
This benchmark repeats, ``--repeats`` times: profile the phase costs with ``--reps`` repetitions
(``profile_machine``), then run every schedule for real with ``--steps`` timed steps at each of
``pipeline.process_counts`` (``validation.real_vs_simulated``, the stage's code), and predicts every
run from the profile's costs under four estimators: the median of the samples (the profile stage's
default) or each micro-batch's fastest repetition (``measure_costs(estimator="min")``), each over the
first 4 repetitions (the quick profile's ``profiling.reps``) and over all ``--reps``. Each
prediction is compared with the run's median step and with its fastest step.

Per run it also records how far the run's own per-phase CPU times are from the profile's
(``phase_cpu_vs_profile``: the schedule simulated with the run's CPU times, over the same simulation
with the profile's costs, both without external load, minus 1): a difference there is not the
simulator's dependency model (the in-sample error checks that) but what each phase costs inside that
schedule.

    .venv/bin/python benchmarks/januspipe/profile_estimators.py --repeats 4 --reps 12 --steps 3 \\
        --out benchmarks/results/januspipe_profile_estimators.json

Needs ``data/mlip`` (``dvc repro januspipe_data``). About 80-90 s per repeat on the 2-core VM.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks._cli import fail, output_file, positive_int  # noqa: E402

#: the quick profile's profiling.reps: the estimators are also computed over this many repetitions
QUICK_REPS = 4


def _summary(rows: list[dict], estimators: list[str]) -> list[dict]:
    out = []
    for agg in ("median step", "fastest step"):
        for est in estimators:
            errs = [r["sims_s"][est] / (statistics.median(r["makespans_s"]) if agg == "median step"
                                        else min(r["makespans_s"])) - 1.0 for r in rows]
            per_repeat = {}
            for r, e in zip(rows, errs):
                per_repeat.setdefault(r["repeat"], []).append(abs(e))
            out.append({"real": agg, "estimator": est, "max_abs_error": max(abs(e) for e in errs),
                        "mean_abs_error": statistics.mean(abs(e) for e in errs), "mean_error": statistics.mean(errs),
                        "max_abs_error_per_repeat": [max(v) for _, v in sorted(per_repeat.items())]})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=positive_int, default=3, help="profile + real runs, this many times (default 3)")
    p.add_argument("--reps", type=positive_int, default=12,
                   help=f"profiling repetitions per repeat (default 12; >= {QUICK_REPS})")
    p.add_argument("--steps", type=positive_int, default=3, help="timed steps per schedule in the real runs (default 3)")
    p.add_argument("--out", type=output_file, default=ROOT / "benchmarks" / "results" / "januspipe_profile_estimators.json")
    args = p.parse_args(argv)
    if args.reps < QUICK_REPS:
        return fail(f"--reps {args.reps}: expected >= {QUICK_REPS} (the estimators are also computed over the first "
                    f"{QUICK_REPS} repetitions, the quick profile's profiling.reps)")

    from components.base import ConfigError, InputError
    from components.io import atomic_file
    from components.januspipe.config import JanuspipeConfig
    from tasks.params import load_config

    try:
        cfg = load_config(JanuspipeConfig, {"profiling": {"reps": args.reps}, "pipeline": {"steps": args.steps}})
    except (ConfigError, InputError) as err:
        return fail(err)

    from components.januspipe.profiler import cost_model, profile_machine, with_estimator
    from components.januspipe.runtime import start_fork_server
    from components.januspipe.simulator import canonical_1f1b_budget, simulate, tune
    from components.januspipe.validation import cores, real_vs_simulated
    from components.mlip.data import load_split
    from components.mlip.train import LossWeights

    def say(msg: str, *a) -> None:
        print(time.strftime("%H:%M:%S"), msg % a, flush=True)

    try:
        structs = load_split(ROOT / "data" / "mlip", "train")
    except InputError as err:
        return fail(f"{err} (run `dvc repro januspipe_data` first)")
    pc, n_cores = cfg.pipeline, cores()
    weights = LossWeights.from_config(cfg.train)
    start_fork_server()
    t0 = time.perf_counter()
    rows: list[dict] = []
    profiles: list[dict] = []
    for rep in range(args.repeats):
        measured = profile_machine(cfg, structs)
        lat, bw = measured["latency_s"], measured["bandwidth_Bps"]
        ests = {}
        for k in dict.fromkeys((QUICK_REPS, args.reps)):
            first_k = {**measured, "samples_s": {key: [v[:k] for v in per_mb] for key, per_mb in measured["samples_s"].items()}}
            for name in ("median", "min"):
                ests[f"{name}@{k}"] = cost_model(with_estimator(first_k, name), lat, bw)
        base = ests[f"median@{QUICK_REPS}"]   # what the quick profile's profile stage gives: the runs are tuned on it
        profiles.append({"repeat": rep, "block_s": {k: list(c.block_s) for k, c in ests.items()},
                         "samples_s": measured["samples_s"], "latency_s": lat})
        say("repeat %d/%d: per-block phase costs (ms) %s", rep + 1, args.repeats,
            "; ".join(f"{k} " + "/".join(f"{1e3 * x:.2f}" for x in c.block_s) for k, c in ests.items()))
        for procs in pc.process_counts:
            M = pc.microbatches_per_device * procs
            runs, _, _, _ = real_vs_simulated(procs, pc, base, cfg.model, structs, weights, seed=cfg.seed,
                                              n_cores=n_cores)
            budget = canonical_1f1b_budget(procs, M, base, pc.num_blocks)
            for r in runs:
                sched = tune(r["schedule"], procs, M, base, pc.num_blocks,
                             None if r["schedule"] == "gpipe4" else budget).schedule
                sims = {k: simulate(sched, c, pc.num_blocks, cores=n_cores, external_load=r["external_load"]).makespan_s
                        for k, c in ests.items()}
                idle_profile = simulate(sched, base, pc.num_blocks, cores=n_cores).makespan_s
                rows.append({"repeat": rep, "schedule": r["schedule"], "params": r["params"], "processes": procs,
                             "makespans_s": r["measured_makespans_s"], "external_load": r["external_load"],
                             "sims_s": sims, "sim_error_in_sample": r["sim_error"],
                             "sim_load_model_error": r["sim_load_model_error"],
                             "phase_cpu_vs_profile": r["sim_idle_machine_makespan_s"] / idle_profile - 1.0})
                ms = r["measured_makespans_s"]
                say("  %s %dp: steps %s s; profile-cost error vs median step %s; run's phase CPU vs profile %+.1f%%",
                    r["params"], procs, "/".join(f"{x:.3f}" for x in ms),
                    ", ".join(f"{k} {100 * (v / statistics.median(ms) - 1):+.1f}%" for k, v in sims.items()),
                    100 * rows[-1]["phase_cpu_vs_profile"])
    summary = _summary(rows, list(ests))
    out = {"cores": n_cores, "repeats": args.repeats, "reps": args.reps, "steps": args.steps,
           "seconds": time.perf_counter() - t0, "when_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
           "summary": summary, "runs": rows, "profiles": profiles}
    with atomic_file(args.out) as fh:
        fh.write(json.dumps(out, indent=1) + "\n")
    print("\n| real run | estimator | max abs error | mean abs error | mean error | max abs error per repeat |")
    print("|---|---|---|---|---|---|")
    for s in summary:
        print(f"| {s['real']} | {s['estimator']} | {s['max_abs_error']:.3f} | {s['mean_abs_error']:.3f} | "
              f"{s['mean_error']:+.3f} | {' / '.join(f'{x:.3f}' for x in s['max_abs_error_per_repeat'])} |")
    cpu = [r["phase_cpu_vs_profile"] for r in rows]
    print(f"\nrun's phase CPU vs the profile's (same schedule, no external load): {100 * min(cpu):+.1f}% to "
          f"{100 * max(cpu):+.1f}%; in-sample error max {max(abs(r['sim_error_in_sample']) for r in rows):.3f}; "
          f"{out['seconds']:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
