"""How stable is Skrull's profiled CPU cost model from one profile to the next?

Alternates, in one process on one thread, the compute profile as the ``profile`` stage now runs it
(``profile_compute``: n = 1, 2, 4, … per length, interleaved passes, fastest of ``repeats``) with the
earlier procedure (``--old``: n ∈ {1, tokens_per_config // S} per length, each point timed
``old_repeats`` times back to back, median), fits each with ``fit_compute`` and reports, per
procedure, the spread of every coefficient over the rounds. Model, vocabulary, CP degree and the new
procedure's lengths/repeats come from params.yaml (``skrull``). Writes
``benchmarks/results/skrull_profile_stability.json``.

    .venv/bin/python benchmarks/skrull/profile_stability.py [--rounds 5]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks._cli import fail, output_file, positive_int  # noqa: E402

OLD_LENGTHS = [16, 64, 256, 1024, 2048]  # the earlier params.yaml grid


def old_profile(model_cfg: dict, vocab: int, cp: int, tokens_per_config: int, reps: int, seed: int) -> list[dict]:
    """The earlier procedure: endpoint design, each point timed back to back (median of ``reps``)."""
    import torch

    from components.skrull.cost_model import SHARDED
    from components.skrull.model import build_model
    from components.skrull.profiling import compute_design, measure_microbatch

    model = build_model(model_cfg, vocab, 2 * max(OLD_LENGTHS), seed)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    rows = []
    for kind, s, n in compute_design(OLD_LENGTHS, tokens_per_config, cp, design="endpoints"):
        placement = [0] * n if kind == "local" else [SHARDED] * n
        sec, mem, toks = measure_microbatch(model, [s] * n, placement, cp, vocab, reps, rng)
        rows.append({"kind": kind, "length": s, "n": n, "tokens_on_rank": toks, "seconds": sec, "saved_bytes": mem})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=positive_int, default=5, help="profiles per procedure (alternating; >= 2)")
    p.add_argument("--old-repeats", type=positive_int, default=3,
                   help="back-to-back repetitions of the earlier procedure")
    p.add_argument("--out", type=output_file,
                   default=ROOT / "benchmarks" / "results" / "skrull_profile_stability.json")
    args = p.parse_args(argv)
    if args.rounds < 2:
        p.error(f"argument --rounds: got '{args.rounds}'; expected >= 2 (the spread over rounds needs two)")

    from components.base import ConfigError, InputError

    try:
        return _run(args)
    except (ConfigError, InputError) as err:
        return fail(err)


def _run(args: argparse.Namespace) -> int:
    import torch

    from components.io import atomic_file
    from components.skrull.config import SkrullConfig
    from components.skrull.profiling import COMPUTE_TERMS, fit_compute, profile_compute
    from tasks.params import load_config

    torch.set_num_threads(1)
    cfg = load_config(SkrullConfig)
    pr, model, vocab = cfg.profiling, cfg.model.model_dump(), cfg.data.corpus.vocab_size
    procedures = {
        "current": lambda: profile_compute(model, vocab, pr.cp, pr.lengths, pr.tokens_per_config, pr.repeats, cfg.seed),
        "old": lambda: old_profile(model, vocab, pr.cp, pr.tokens_per_config, args.old_repeats, cfg.seed),
    }
    records = []
    for r in range(args.rounds):
        for name, run in procedures.items():
            w0, c0 = time.perf_counter(), time.process_time()
            rows = run()
            fit = fit_compute(rows, pr.cp)
            rec = {"round": r, "procedure": name, "wall_s": time.perf_counter() - w0,
                   "cpu_s": time.process_time() - c0, "points": len(rows), "fit": fit, "rows": rows}
            records.append(rec)
            print(f"{time.strftime('%H:%M:%S')} round {r} {name:8s} {rec['wall_s']:5.1f} s, {len(rows)} points: "
                  f"c_tok {fit['c_tok'] * 1e6:.1f} us, c_seq {fit['c_seq'] * 1e3:.3f} ms, "
                  f"c_quad {fit['c_quad'] * 1e9:.1f} ns, c_mb {fit['c_mb'] * 1e3:.2f} ms, MAPE {100 * fit['mape']:.1f} %",
                  flush=True)
    summary = {}
    for name in procedures:
        fits = [x["fit"] for x in records if x["procedure"] == name]
        summary[name] = {k: {"min": min(f[k] for f in fits), "max": max(f[k] for f in fits),
                             "rel_sd": statistics.stdev(f[k] for f in fits) / max(statistics.mean(f[k] for f in fits),
                                                                                  1e-30),
                             "mean_bootstrap_rel_sd": statistics.mean(f[f"{k}_sd"] / f[k] if f[k] > 0 else 0.0
                                                                      for f in fits)}
                         for k in COMPUTE_TERMS}
        summary[name]["wall_s"] = [x["wall_s"] for x in records if x["procedure"] == name]
    out = {"host": platform.node(), "rounds": args.rounds, "params": pr.model_dump(),
           "old": {"lengths": OLD_LENGTHS, "repeats": args.old_repeats}, "summary": summary, "records": records}
    with atomic_file(args.out) as fh:
        fh.write(json.dumps(out, indent=2) + "\n")
    unit = {"c_mb": ("ms", 1e3), "c_seq": ("ms", 1e3), "c_seq_shard": ("ms", 1e3), "c_tok": ("us", 1e6),
            "c_quad": ("ns", 1e9)}
    print("\n| coefficient | " + " | ".join(f"{n}: min-max (rel. SD over rounds)" for n in procedures) + " |")
    print("|---|" + "---|" * len(procedures))
    for k in COMPUTE_TERMS:
        u, f = unit[k]
        print(f"| {k} ({u}) | " + " | ".join(
            f"{summary[n][k]['min'] * f:.3g}-{summary[n][k]['max'] * f:.3g} ({100 * summary[n][k]['rel_sd']:.1f} %)"
            for n in procedures) + " |")
    print("| profile wall (s) | " + " | ".join(f"{min(summary[n]['wall_s']):.0f}-{max(summary[n]['wall_s']):.0f}"
                                              for n in procedures) + " |")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
