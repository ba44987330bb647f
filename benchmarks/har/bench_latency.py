"""Motion-extraction latency vs resolution: TV-L1 / Farnebäck / DIS flow of one chunk (5 pairs)
against one IMFE pass (onnxruntime and torch), measured side by side on the same chunks.

Latency does not depend on trained weights, so IMFE is built at each resolution with the
quick-profile widths (the network is tied to its input size) and random weights. Writes
``benchmarks/results/har_latency.json``.

    .venv/bin/python benchmarks/har/bench_latency.py [--sizes 48 64 96 128] [--chunks 4] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks._cli import output_file, positive_int  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=positive_int, nargs="+", default=[48, 64, 96, 128],
                   help="frame sizes (pixels): multiples of 8 from 32 to 512, as har.data.height")
    p.add_argument("--chunks", type=positive_int, default=4, help="chunks timed per size (after one warm-up pass)")
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--out", type=output_file, default=ROOT / "benchmarks" / "results" / "har_latency.json")
    args = p.parse_args(argv)
    bad = [s for s in args.sizes if not (32 <= s <= 512 and s % 8 == 0)]
    if bad:
        p.error(f"--sizes {bad}: expected multiples of 8 from 32 to 512 (the range of har.data.height; "
                "the IMFE encoder downsamples by 8)")

    import torch

    from components.io import atomic_file

    from components.har.chunks import split_chunks
    from components.har.config import HarConfig
    from components.har.data import clip_rng, render_clip
    from components.har.experiment import Split, latency_benchmark
    from components.har.imfe import ImfeNet, export_onnx
    from components.har.opticalflow import FLOW_METHODS
    from components.har.streams import StreamNet

    base = HarConfig()
    cfg = base.model_copy(update={"evaluate": base.evaluate.model_copy(
        update={"threads": args.threads, "latency_chunks": args.chunks})})
    n_cls, widths = len(base.data.classes), base.streams.widths
    results = []
    for size in args.sizes:
        dcfg = base.data.model_copy(update={"height": size, "width": size, "frames_per_clip": 6 * args.chunks})
        chunks = split_chunks(render_clip("arm_circle_cw", clip_rng(0, "test", size), dcfg), 6)
        torch.manual_seed(0)
        nets = {"imfe": ImfeNet(size, size, 6, widths[-1], base.imfe).eval(),
                "rgb": StreamNet(3, n_cls, widths).eval(),
                **{m: StreamNet(10, n_cls, widths).eval() for m in FLOW_METHODS}}
        with tempfile.TemporaryDirectory() as tmp:
            # the evaluate stage's benchmark (experiment.latency_benchmark), on random weights
            lat = latency_benchmark(cfg, Split(["bench"], np.zeros(1, int), [chunks]), nets,
                                    export_onnx(nets["imfe"], Path(tmp) / "imfe.onnx"))
        times = {**{m: lat["ms"][f"{m}_flow"] for m in FLOW_METHODS},
                 "imfe_onnx": lat["ms"]["imfe_onnx"], "imfe_torch": lat["ms"]["imfe_torch"]}
        ms = {k: v["p50"] for k, v in times.items()}
        row = {"size": size, "ms_per_chunk_p50": ms, "speedup_imfe_vs_tvl1": ms["tvl1"] / ms["imfe_onnx"],
               "speedup_imfe_torch_vs_tvl1": ms["tvl1"] / ms["imfe_torch"]}
        results.append(row)
        print(f"{size:>4}px  " + "  ".join(f"{k} {v:8.2f} ms" for k, v in ms.items())
              + f"  speedup(onnx) {row['speedup_imfe_vs_tvl1']:.0f}x", flush=True)
    out = args.out
    payload = {"benchmark": "har_latency", "threads": args.threads, "chunks": args.chunks,
               "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
               "tvl1": base.opticalflow.tvl1.model_dump(by_alias=True), "results": results}
    with atomic_file(out) as fh:
        fh.write(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
