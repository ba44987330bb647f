"""How steady is this machine's CPU speed? A fixed single-thread torch workload, timed back to back.

Every timing claim in this repository (phase costs, latencies, speed-ups measured in one run) assumes
that a core does the same work in the same CPU time from one second to the next. This script checks
that: it runs one fixed workload (``--kind matmul``: ``--size`` x ``--size`` float32 matrix products;
``--kind januspipe``: the JanusPipe profile stage's ``measure_costs`` at 2 repetitions, on
``data/mlip`` after ``dvc repro januspipe_data``) on one torch thread, back to back for ``--seconds``,
and records each sample's thread CPU time (``time.thread_time``: what the profilers here use). With
``--load-seconds N`` it first keeps both cores busy for N seconds (a 2-thread matmul), as a training
stage does right before a profile or benchmark stage.

    .venv/bin/python benchmarks/cpu_speed_states.py --seconds 60
    .venv/bin/python benchmarks/cpu_speed_states.py --kind januspipe --load-seconds 60 --seconds 45 \\
        --out benchmarks/results/cpu_speed_states.json

Output: one line per sample (seconds since the start, CPU ms) and a summary: min, median, p90, max
and ``slow_share`` (samples more than 20 % above the minimum). On a machine with a steady CPU the
max is within a few % of the min.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._cli import fail, output_file, positive_float, positive_int  # noqa: E402


def _matmul_sample(size: int, reps: int):
    import torch

    a = torch.randn(size, size, generator=torch.Generator().manual_seed(0))

    def run() -> float:
        t0 = time.thread_time()
        for _ in range(reps):
            a @ a
        return (time.thread_time() - t0) * 1e3
    return run


def _januspipe_sample():
    import torch

    from components.januspipe.config import JanuspipeConfig
    from components.januspipe.profiler import measure_costs
    from components.mlip.data import load_split
    from components.mlip.train import LossWeights
    from tasks.params import load_config

    cfg = load_config(JanuspipeConfig)
    structs = list(load_split(Path("data/mlip"), "train")[: cfg.profiling.microbatches])
    weights = LossWeights.from_config(cfg.train)

    def run() -> float:  # the sum of the timed (stage, phase) medians, in ms
        raw = measure_costs(cfg.model, structs, weights, 1, reps=2, dtype=torch.float32, seed=cfg.seed)["raw"]
        return sum(v for k, v in raw.items() if k.endswith("_s")) * 1e3
    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=["matmul", "januspipe"], default="matmul")
    p.add_argument("--size", type=positive_int, default=384, help="matrix size of --kind matmul (default 384)")
    p.add_argument("--reps", type=positive_int, default=20, help="matrix products per sample (default 20)")
    p.add_argument("--seconds", type=positive_float, default=60.0, help="how long to sample (default 60)")
    p.add_argument("--load-seconds", type=positive_float, default=None, help="2-core load before sampling (default: none)")
    p.add_argument("--out", type=output_file, default=None, help="write samples and summary as JSON")
    a = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from components.base import ConfigError, InputError

    try:
        sample = _matmul_sample(a.size, a.reps) if a.kind == "matmul" else _januspipe_sample()
    except (ConfigError, InputError) as err:  # e.g. --kind januspipe before `dvc repro januspipe_data`
        return fail(err)
    sample()  # warm-up
    if a.load_seconds:
        print(f"loading both cores for {a.load_seconds:.0f} s ...", flush=True)
        subprocess.run([sys.executable, "-c", (
            "import time, torch; torch.set_num_threads(2); x = torch.randn(1500, 1500); t = time.time()\n"
            f"while time.time() - t < {a.load_seconds}: x @ x")], check=True)
    samples, t0 = [], time.time()
    while time.time() - t0 < a.seconds:
        ms = sample()
        # ms to the ns (the clock's resolution): rounding to 0.01 ms made a tiny workload's sample 0.0
        samples.append((round(time.time() - t0, 2), round(ms, 6)))
        print(f"t+{samples[-1][0]:6.1f} s  {ms:8.2f} ms", flush=True)
    v = sorted(ms for _, ms in samples)
    lo = v[0]
    summary = {"kind": a.kind, "samples": len(v), "min_ms": lo, "median_ms": statistics.median(v),
               "p90_ms": v[int(0.9 * (len(v) - 1))], "max_ms": v[-1], "max_over_min": v[-1] / lo if lo > 0 else None,
               "slow_share": sum(x > 1.2 * lo for x in v) / len(v), "load_seconds": a.load_seconds or 0}
    print(json.dumps(summary))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"summary": summary, "samples": samples,
                                     "when_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime(t0))}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
