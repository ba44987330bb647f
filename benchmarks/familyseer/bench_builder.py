"""Per-candidate build cost: MetaSchedule's stock LocalBuilder vs the component's PersistentBuilder.

Each mode runs in a fresh Python process (so import costs are counted as a tuning run pays them):

- ``stock``: ``TuneContext`` (imports ``tvm.s_tir.tensor_intrin``) + ``LocalBuilder(max_workers=W)``,
  which starts a new process pool per batch whose build function imports the intrinsics again;
- ``persistent``: ``lean_tensor_intrinsics()`` + ``measure.make_builder(W, ...)`` (one pool, kept).

Candidates are the design-space schedules of resnet_tiny's first conv task (as many as asked, cycled).
Writes ``benchmarks/results/familyseer_builder.json``:

    .venv/bin/python benchmarks/familyseer/bench_builder.py [--batches 3] [--per-batch 4] [--workers 2]
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

from benchmarks._cli import output_file, positive_int  # noqa: E402


def _child(mode: str, batches: int, per_batch: int, workers: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import resource

    t_start = time.perf_counter()
    if mode == "persistent":
        from components.familyseer.measure import lean_tensor_intrinsics

        lean_tensor_intrinsics()
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from components.familyseer.zoo import build_torch_model, extract_tasks, make_target, to_relax

    module, inputs = build_torch_model("resnet_tiny", 0)
    target = make_target(2)
    tasks, infos = extract_tasks(to_relax(module, inputs), target, True)
    conv = next(t for t, i in zip(tasks, infos) if i.core_op == "conv2d")
    t_ctx = time.perf_counter()
    ctx = ms.TuneContext(mod=conv.dispatched[0], target=target, space_generator="post-order-apply",
                         search_strategy="replay-trace", task_name="conv", num_threads=1)
    spaces = ctx.space_generator.generate_design_space(ctx.mod)
    ctx_s = time.perf_counter() - t_ctx
    if mode == "stock":
        builder = ms.builder.LocalBuilder(max_workers=workers, timeout_sec=600)
    else:
        from components.familyseer.measure import make_builder

        builder = make_builder(workers, 600)
    per = []
    for b in range(batches):
        inputs_ = [ms.builder.BuilderInput(spaces[(b * per_batch + i) % len(spaces)].mod, target)
                   for i in range(per_batch)]
        t0 = time.perf_counter()
        res = builder.build(inputs_)
        per.append(time.perf_counter() - t0)
        assert all(r.error_msg is None for r in res), [r.error_msg for r in res]
    if hasattr(builder, "close"):
        builder.close()
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"mode": mode, "tune_context_s": ctx_s, "batch_wall_s": per,
            "wall_per_candidate_s": sum(per) / (batches * per_batch),
            "process_wall_s": time.perf_counter() - t_start,
            "cpu_s": own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=positive_int, default=3)
    p.add_argument("--per-batch", type=positive_int, default=4)
    p.add_argument("--workers", type=positive_int, default=2)
    p.add_argument("--child", choices=["stock", "persistent"], help=argparse.SUPPRESS)
    p.add_argument("--out", type=output_file, default=ROOT / "benchmarks" / "results" / "familyseer_builder.json")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.batches, args.per_batch, args.workers)))
        return 0
    results = {}
    for mode in ("persistent", "stock"):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--batches", str(args.batches),
                              "--per-batch", str(args.per_batch), "--workers", str(args.workers)],
                             capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            print(f"error: the {mode} measurement exited {out.returncode}:\n{out.stderr.strip()}", file=sys.stderr)
            return 1
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        print(mode, json.dumps(results[mode]))
    results["speedup_wall_per_candidate"] = (results["stock"]["wall_per_candidate_s"]
                                             / results["persistent"]["wall_per_candidate_s"])
    results["speedup_process_wall"] = results["stock"]["process_wall_s"] / results["persistent"]["process_wall_s"]
    with open("/proc/loadavg") as fh:
        load = fh.read().split()[:3]
    results["machine"] = {"platform": platform.platform(), "cpus": __import__("os").cpu_count(),
                          "loadavg_at_end": load}
    from components.io import atomic_file

    with atomic_file(args.out) as fh:
        fh.write(json.dumps(results, indent=2))
    print(f"stock / persistent per candidate: {results['speedup_wall_per_candidate']:.1f}x -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
