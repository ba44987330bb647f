"""Where the streaming pipeline's cold first chunk goes (``HarPipeline.warm_up``'s ``warmup_ms``).

Every measurement is a fresh process (the cost is a first-use cost): it loads the pipeline as the
evaluate stage does (``stream.load_pipeline``, onnxruntime, ``--threads`` threads) and times the
first chunk of ``warm_up``, split into the pipeline's three parts (RGB CNN, motion source, LSTR
head). Modes:

- ``cold``: nothing else first (the stage's situation since its heads train in child processes);
- ``preimported``: ``torch.fx.experimental.symbolic_shapes`` imported first (timed on its own, torch
  already loaded), the module torch's attention imports on its first call with a padding mask,
  and sympy with it.

    .venv/bin/python benchmarks/har/warmup_cost.py --source imfe --reps 3 \\
        --out benchmarks/results/har_warmup_cost.json

Needs the evaluate stage's models (``dvc repro har_evaluate``: ``models/har``).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks._cli import output_file  # noqa: E402

MODES = ("cold", "preimported")
SOURCES = ("imfe", "rgb", "tvl1", "farneback", "dis")


def measure(models: str, source: str, threads: int, mode: str) -> dict:
    """One measurement, in this process (the parent runs it in a fresh one per repetition)."""
    out: dict = {"mode": mode}
    import importlib

    importlib.import_module("torch")                              # loaded in both modes before any timing

    if mode == "preimported":
        t = time.perf_counter()
        importlib.import_module("torch.fx.experimental.symbolic_shapes")
        out["import_ms"] = 1000.0 * (time.perf_counter() - t)
    from components.har.stream import load_pipeline

    pipe, _ = load_pipeline(models, source, "onnx", threads)
    parts: dict[str, float] = {}
    recording = [True]                                             # only the cold first chunk's calls

    def timed(name, fn):
        def call(*args):
            t = time.perf_counter()
            result = fn(*args)
            if recording[0]:
                parts[name] = parts.get(name, 0.0) + 1000.0 * (time.perf_counter() - t)
            return result
        return call

    for name in ("rgb", "motion", "head"):                         # RGB only: no motion model
        if getattr(pipe, name) is not None:
            setattr(pipe, name, timed(name, getattr(pipe, name)))
    out["first_chunk_ms"] = pipe.warm_up(1)                        # warm_up's cold chunk (warmup_ms)
    recording[0] = False
    out["parts_ms"] = parts
    out["second_chunk_ms"] = pipe.warm_up(1)                       # the same pipeline, now warm
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=Path, default=ROOT / "models" / "har")
    ap.add_argument("--source", default="imfe", help=f"motion source, one of {list(SOURCES)}")
    ap.add_argument("--modes", nargs="+", default=list(MODES), help=f"some of {list(MODES)}")
    ap.add_argument("--reps", type=int, default=3, help="fresh processes per mode")
    ap.add_argument("--threads", type=int, default=1, help="threads of torch/onnxruntime/OpenCV (stage: 1)")
    ap.add_argument("--out", type=output_file, default=None, help="write the JSON result here (checked before the run)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.source not in SOURCES:
        ap.error(f"--source {a.source!r}: expected one of {list(SOURCES)}")
    bad = [m for m in a.modes if m not in MODES]
    if bad:
        ap.error(f"--modes {bad}: unknown; expected some of {list(MODES)}")
    if a.reps < 1 or a.threads < 1:
        ap.error(f"--reps {a.reps} / --threads {a.threads}: expected at least 1 each")
    if a.child:
        print(json.dumps(measure(str(a.models), a.source, a.threads, a.child)))
        return 0
    if not (a.models / "heads" / f"{a.source}.pt").is_file():
        print(f"error: --models {a.models}: no heads/{a.source}.pt; run `dvc repro har_evaluate` first",
              file=sys.stderr)
        return 2
    rows = []
    for mode in a.modes:
        for rep in range(a.reps):
            cmd = [sys.executable, __file__, "--child", mode, "--models", str(a.models), "--source", a.source,
                   "--threads", str(a.threads)]
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if res.returncode != 0:
                print(f"error: measurement {mode} #{rep} failed:\n{res.stderr.strip()}", file=sys.stderr)
                return 1
            row = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append(row)
            parts = ", ".join(f"{k} {v:.1f}" for k, v in row["parts_ms"].items())
            print(f"{mode} #{rep}: first chunk {row['first_chunk_ms']:.1f} ms ({parts}), second "
                  f"{row['second_chunk_ms']:.1f} ms" + (f", import {row['import_ms']:.0f} ms" if "import_ms" in row
                                                        else ""), flush=True)
    result = {"source": a.source, "threads": a.threads, "reps": a.reps, "rows": rows,
              "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine()}}
    if a.out is not None:
        from tasks.io import write_json

        write_json(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
