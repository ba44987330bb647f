"""Ablation: the flow stream CNNs trained with and without the mirrored motion of reflected strips.

``streams.random_shift`` translates each training batch by up to 3 px with reflect padding. A
reflected strip shows the scene mirrored, so for stacked flow its motion must be mirrored too (x
negated in the left/right strips, y in the top/bottom ones); before 2026-11-27 it was copied
unchanged. The teacher stage trains each stream CNN with one seed (``har.seed``), so the change of
its chunk accuracy between two committed runs mixes the fix with the seed's luck. This trains the
flow stream CNNs of the teacher stage (same data, flows, settings) with several seeds both ways and
reports the test chunk accuracy, mean and std over seeds.

    .venv/bin/python benchmarks/har/flow_shift_ablation.py --methods tvl1 dis --seeds 0 1 2 \\
        --out benchmarks/results/har_flow_shift_ablation.json

Needs the committed data and teacher flows (``dvc repro har_teacher``); ~20 s per training on 2 cores.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks._cli import fail, output_file, params_config  # noqa: E402

METHODS = ("tvl1", "farneback", "dis")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), help=f"flow methods, of {list(METHODS)}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--out", type=output_file, default=None, help="write the JSON result here (checked before the run)")
    a = ap.parse_args(argv)
    bad = [m for m in a.methods if m not in METHODS]
    if bad:
        ap.error(f"--methods {bad}: unknown; expected some of {list(METHODS)}")
    if len(set(a.methods)) != len(a.methods):
        ap.error(f"--methods {a.methods}: expected distinct methods")
    if len(set(a.seeds)) != len(a.seeds):
        ap.error(f"--seeds {a.seeds}: expected distinct seeds")

    import numpy as np
    import torch

    from components.base import ConfigError, InputError
    from components.har import experiment as ex
    from components.har import streams
    from components.har.config import HarConfig

    try:
        cfg = params_config(HarConfig, a.params)
    except ConfigError as err:
        return fail(err)
    torch.set_num_threads(cfg.torch_threads)
    try:
        manifest, splits = ex.load_splits(ROOT / "data" / "har", cfg.opticalflow.clip_len)
        flows = {m: {s: ex.load_flows(ROOT / "results" / "har" / "teacher" / f"flows_{m}.npz", sp.ids)
                     for s, sp in splits.items()} for m in a.methods}
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    classes = manifest["classes"]
    mirror_label = torch.from_numpy(ex.mirror_labels(np.arange(len(classes)), classes)).long()
    fixed = streams.random_shift

    def unmirrored(x, max_shift, gen, kind="rgb"):  # the shift before the fix: strips copied as they are
        return fixed(x, max_shift, gen, "rgb")

    result = {"settings": cfg.streams.model_dump(), "seeds": a.seeds, "methods": {}}
    try:
        for m in a.methods:
            x, y = ex._inputs(m, splits["train"], flows[m]["train"])
            xt, yt = ex._inputs(m, splits["test"], flows[m]["test"])
            row = {}
            for variant, shift in (("mirrored_strips", fixed), ("copied_strips", unmirrored)):
                streams.random_shift = shift
                accs = []
                for seed in a.seeds:
                    t0 = time.perf_counter()
                    net, _ = streams.train_stream(x, y, "flow", len(classes), cfg.streams, seed, mirror_label)
                    accs.append(float(streams.stream_accuracy(net, xt, yt)))
                    print(f"{m} {variant} seed {seed}: chunk accuracy {accs[-1]:.3f} ({time.perf_counter() - t0:.0f} s)",
                          flush=True)
                row[variant] = {"chunk_accuracy": accs, "mean": float(np.mean(accs)), "std": float(np.std(accs))}
            result["methods"][m] = row
    finally:
        streams.random_shift = fixed
    print("\n| flow | mirrored strips (fix), mean ± std | copied strips (before), mean ± std | per seed (fix / before) |")
    print("|---|---|---|---|")
    for m, row in result["methods"].items():
        f, b = row["mirrored_strips"], row["copied_strips"]
        seeds = " ; ".join(f"{p * 100:.1f} / {q * 100:.1f}" for p, q in zip(f["chunk_accuracy"], b["chunk_accuracy"]))
        print(f"| {m} | {f['mean'] * 100:.1f} ± {f['std'] * 100:.1f} | {b['mean'] * 100:.1f} ± {b['std'] * 100:.1f} | {seeds} |")
    if a.out is not None:
        from tasks.io import write_json

        write_json(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
