"""Ablation: does the online head need to see continuous streams in training?

The real-time runtime (``components.har.stream.HarPipeline``) keeps one window over the whole
stream and never resets it, so after ``long_memory + short_window`` chunks every window it sees is
full and spans clip boundaries. A head trained only on each clip's own windows (left-padded from the
clip's first chunk; a quick-profile clip has 3 chunks, the window 8) never sees such a window.
``temporal.stream_passes`` adds that many continuous streams of all training clips (seeded random
order) to the head's training set.

For every ``--stream-passes`` value this trains the evaluate stage's heads (every source, every
``evaluate.seeds`` seed, ``components.har.experiment.evaluate_heads``) on the committed features and
reports the per-clip online accuracy (each test clip streamed on its own) and the continuous-stream
accuracy (the test clips back to back, as the runtime streams them). Both are scored on the test
clips, the split the evaluate stage reports (the data stage writes no validation split): the committed
``stream_passes`` was chosen on the reported split (components/har/README.md).
``benchmarks/har/validate_choices.py --alternative temporal.stream_passes=0`` re-makes the choice on
fresh validation clips.

    .venv/bin/python benchmarks/har/stream_training.py --stream-passes 0 1 \\
        --out benchmarks/results/har_stream_training.json

Needs the committed data, teacher and IMFE (``dvc repro har_imfe``); a few minutes per value on 2 cores.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks._cli import fail, non_negative_int, output_file, params_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stream-passes", type=non_negative_int, nargs="+", default=[0, 1],
                    help="values of temporal.stream_passes to compare")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--out", type=output_file, default=None, help="write the JSON result here")
    a = ap.parse_args(argv)

    from components.base import ConfigError, InputError
    from components.har.config import HarConfig

    try:  # bad YAML, a 'har' section that is not a mapping, an invalid value: named, exit 2
        base = params_config(HarConfig, a.params)
    except ConfigError as err:
        return fail(err)
    try:
        return _run(a, base)
    except (ConfigError, InputError) as err:
        return fail(err)


def _run(a: argparse.Namespace, base) -> int:
    import torch

    from components.har import experiment as ex

    torch.set_num_threads(base.torch_threads)
    manifest, splits, nets, flows, meta = ex.evaluation_inputs(base, ROOT / "data" / "har", ROOT / "models" / "har",
                                                               ROOT / "results" / "har")
    result = {"seeds": base.evaluate.seeds, "sources": base.evaluate.sources, "runs": {}}
    for passes in a.stream_passes:
        cfg = base.model_copy(update={"temporal": base.temporal.model_copy(update={"stream_passes": passes})})
        t0 = time.perf_counter()
        _, per_source = ex.evaluate_heads(cfg, manifest["classes"], splits, flows, nets, None, meta)
        run = {s: {k: d[k] for k in ("online_accuracy", "online_accuracy_std", "clip_accuracy",
                                      "stream_accuracy", "stream_accuracy_std")} for s, d in per_source.items()}
        result["runs"][str(passes)] = {"per_source": run, "seconds": time.perf_counter() - t0}
        for s, d in run.items():
            print(f"stream_passes={passes} {s:9s} online {100 * d['online_accuracy']:5.1f} "
                  f"+- {100 * d['online_accuracy_std']:4.1f}  stream {100 * d['stream_accuracy']:5.1f} "
                  f"+- {100 * d['stream_accuracy_std']:4.1f}", flush=True)
    if a.out:
        from tasks.io import write_json

        write_json(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
