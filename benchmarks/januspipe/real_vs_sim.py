"""Real pipelined runs of every JanusPipe schedule beside the simulator's prediction, at any process
count, on this machine — the flow's ``pipeline`` stage comparison (``components.januspipe.validation``)
without MLflow, Prefect or DVC, so it also runs on a cluster node with more cores (one rank per core
is not oversubscribed) or a GPU node.

Phase costs are measured here first (``profile_machine``, as the ``profile`` stage does); the config
is the ``januspipe`` section of params.yaml plus ``--set`` overrides. ``--cuda-exactness`` also runs
every schedule at one pipeline stage on the GPU (nccl, world size 1, float64) against the
single-process double backward computed on the CPU: NCCL refuses two ranks on one GPU, so one GPU
can only check the runtime's device path, not GPU-to-GPU messages.

    python benchmarks/januspipe/real_vs_sim.py --processes 2 4 8 --set pipeline.num_blocks=16 \\
        [--cuda-exactness] [--out benchmarks/results/januspipe_real_vs_sim.json]

Writes JSON (the rows of ``results/januspipe/pipeline/runs.json``) and prints a markdown table.
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

from benchmarks._cli import fail, output_file, positive_int  # noqa: E402


def _cuda_exactness(cfg, costs, structs, weights) -> dict[str, float]:
    """Every schedule at one stage on cuda:0 (nccl, one rank) vs the CPU float64 reference."""
    from components.januspipe.runtime import exactness_error, launch, run_many
    from components.januspipe.validation import exactness_runs

    pc = cfg.pipeline.model_copy(update={"backend": "nccl"})
    specs, labels, reference = exactness_runs(pc, 1, costs, cfg.model, structs, weights, cfg.seed)
    results, _ = launch(run_many, 1, specs, backend="nccl", timeout=pc.timeout_s)
    return {label: exactness_error([r[k] for r in results], reference) for k, label in enumerate(labels)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=positive_int, nargs="+", default=None,
                   help="pipeline depths run for real (sets pipeline.process_counts; default: params.yaml's "
                        "januspipe.pipeline.process_counts). Checked with the config before anything runs: "
                        "pipeline.num_blocks must hold 2 stages per process for the V-shaped schedules")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a januspipe parameter, e.g. --set pipeline.num_blocks=16 (repeatable)")
    p.add_argument("--cuda-exactness", action="store_true", help="also check every schedule's gradients on the GPU")
    p.add_argument("--out", type=output_file, default=ROOT / "benchmarks" / "results" / "januspipe_real_vs_sim.json")
    args = p.parse_args(argv)

    from components.base import ConfigError, InputError, deep_merge, parse_override
    from components.io import atomic_file
    from components.januspipe.config import JanuspipeConfig
    from tasks.params import load_config

    import yaml

    try:
        overrides: dict = {}
        for item in args.overrides:
            try:
                overrides = deep_merge(overrides, parse_override(item))
            except yaml.YAMLError as err:  # the VALUE is parsed as YAML
                problem = " ".join(str(getattr(err, "problem", None) or err).split())
                raise ConfigError(f"--set {item!r}: the value is not valid YAML ({problem}); expected KEY=VALUE "
                                  "with a YAML value, e.g. pipeline.num_blocks=16 or train.seeds=[0,1]") from None
        if args.processes is not None:  # validated with the config (stages per block), before any profiling
            overrides = deep_merge(overrides, {"pipeline": {"process_counts": args.processes}})
        cfg = load_config(JanuspipeConfig, overrides)
    except (ConfigError, InputError) as err:
        named = args.processes is not None and "process_counts" in str(err)
        return fail(f"--processes {args.processes}: {err}" if named else err)
    processes = cfg.pipeline.process_counts

    import torch

    from components.januspipe.profiler import cost_model, profile_machine
    from components.januspipe.runtime import start_fork_server
    from components.januspipe.validation import cores, validate
    from components.mlip.data import load_split
    from components.mlip.train import LossWeights

    def say(msg: str, *a) -> None:
        print(time.strftime("%H:%M:%S"), msg % a, flush=True)

    if args.cuda_exactness and not torch.cuda.is_available():
        print("error: --cuda-exactness: no CUDA device visible to torch", file=sys.stderr)
        return 2
    try:
        structs = load_split(ROOT / "data" / "mlip", "train")
    except InputError as err:
        print(f"error: {err} (run `python -m flows januspipe data` or `dvc repro januspipe_data` first)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    start_fork_server()
    raw = profile_machine(cfg, structs, progress=say)
    costs = cost_model(raw, raw["latency_s"], raw["bandwidth_Bps"])
    weights = LossWeights.from_config(cfg.train)
    n_cores = cores()
    say("cost model: block phases %s ms, p2p latency %.0f us, %d cores",
        ", ".join(f"{1e3 * x:.2f}" for x in costs.block_s), 1e6 * costs.latency_s, n_cores)
    cuda = None
    if args.cuda_exactness:  # first: short, and its failure is recorded, not fatal to the CPU runs
        cuda = {"device": torch.cuda.get_device_name(0)}
        try:
            cuda["rel_error"] = _cuda_exactness(cfg, costs, structs, weights)
            say("cuda exactness (%s): max rel. error %.2e", cuda["device"], max(cuda["rel_error"].values()))
        except Exception as err:  # noqa: BLE001 - reported in the output and the exit status
            cuda["error"] = f"{type(err).__name__}: {err}"
            say("cuda exactness FAILED: %s", cuda["error"])
    rows, _, exact, _ = validate(processes, cfg.pipeline, costs, cfg.model, structs, weights, seed=cfg.seed,
                                 n_cores=n_cores, progress=say)
    out = {"host": platform.node(), "cores": n_cores, "torch": torch.__version__, "processes": processes,
           "overrides": args.overrides, "seconds": time.perf_counter() - t0, "phase_costs": raw,
           "exactness_rel_error": exact, "cuda_exactness": cuda, "runs": rows}
    with atomic_file(args.out) as fh:
        fh.write(json.dumps(out, indent=2) + "\n")
    print("\n| schedule | processes | oversubscription | measured makespan (s) | simulated (s) | error | "
          "idle-machine model error |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['params']} | {r['processes']} | {r['oversubscription']:.1f} | {r['measured_makespan_s']:.3f} | "
              f"{r['sim_makespan_s']:.3f} | {100 * r['sim_error']:+.1f} % | {100 * r['sim_idle_machine_error']:+.1f} % |")
    print(f"\nexactness (float64, {min(processes)} processes): max rel. error {max(exact.values()):.2e}; "
          f"{out['seconds']:.0f} s; wrote {args.out}")
    return 1 if cuda is not None and "error" in cuda else 0


if __name__ == "__main__":
    sys.exit(main())
