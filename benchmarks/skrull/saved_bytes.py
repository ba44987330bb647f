"""What does a rank save for the backward, per token it holds, with whole vs sharded sequences?

Builds the real run's model (``skrull.model`` and the corpus vocabulary from params.yaml), lays out
one micro-batch per case on CP rank 0 (a loopback exchange stands in for the other ranks, so every
tensor has its real size) and counts the distinct storages autograd saves for the backward — the
profile's activation-memory measure. Prints bytes per token on the rank for each case and the largest
saved storages of the first sharded case (shape and the autograd node that saved them), and writes
``benchmarks/results/skrull_saved_bytes.json``.

Skrull's memory model (C = budget / α) needs the per-token figure to be the same for whole and
sharded sequences, whatever their length. The committed README's figures for the attention before
it was rewritten come from running this script on commit 9d3b26a (the functions it calls have the
same names there).

    .venv/bin/python benchmarks/skrull/saved_bytes.py [--length 1638] [--cp 2] [--out FILE.json]

``--length`` must be at least 16·cp: the shortest case, a sharded sequence of length S//8, needs one
token per zigzag chunk (S//8 >= 2·cp).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks._cli import fail, output_file, positive_int  # noqa: E402


def saved_storages(model, layout) -> dict[int, tuple[int, tuple[int, ...], str]]:
    """Distinct non-parameter storages saved for the backward: ptr -> (bytes, shape, saving node)."""
    import torch

    from components.skrull.context_parallel import microbatch_loss

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, tuple[int, tuple[int, ...], str]] = {}

    def pack(t):
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in params and ptr not in seen:
            node = type(t.grad_fn).__name__ if t.grad_fn is not None else "leaf/ctx"
            seen[ptr] = (st.nbytes(), tuple(t.shape), node)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = microbatch_loss(model, layout)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return seen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=positive_int, default=1638, help="length S of the longest sharded sequence "
                   "(default: the real run's C·N = 2·819; at least 16·cp)")
    p.add_argument("--cp", type=positive_int, default=2, help="CP degree")
    p.add_argument("--out", type=output_file, default=ROOT / "benchmarks" / "results" / "skrull_saved_bytes.json")
    args = p.parse_args(argv)
    if args.length < 16 * args.cp:
        p.error(f"--length {args.length} with --cp {args.cp}: expected --length >= 16·cp = {16 * args.cp} (the "
                f"sharded S//8 = {args.length // 8} case needs S//8 >= 2·cp: one token per zigzag chunk)")

    from components.base import ConfigError, InputError

    try:
        return _run(args)
    except (ConfigError, InputError) as err:
        return fail(err)


def _run(args: argparse.Namespace) -> int:
    import torch

    from components.io import atomic_file
    from components.skrull.config import SkrullConfig
    from components.skrull.context_parallel import LoopbackExchange, build_layout
    from components.skrull.cost_model import SHARDED
    from components.skrull.model import build_model
    from tasks.params import load_config

    torch.set_num_threads(1)
    cfg = load_config(SkrullConfig)
    vocab = cfg.data.corpus.vocab_size
    model = build_model(cfg.model.model_dump(), vocab, 2 * args.length, cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    S, half = args.length, args.length // args.cp
    cases = {
        f"local {half}": ([half], [0]),
        f"sharded {S}": ([S], [SHARDED]),
        f"local {half // 2} x2": ([half // 2] * 2, [0, 0]),
        f"sharded {S // 2} x2": ([S // 2] * 2, [SHARDED] * 2),
        f"sharded {S // 8}": ([S // 8], [SHARDED]),
        f"local {half // 2} + sharded {S // 2}": ([half // 2, S // 2], [0, SHARDED]),
    }
    out = {"machine": platform.platform(), "length": S, "cp": args.cp, "model": cfg.model.model_dump(),
           "vocab": vocab, "cases": {}}
    breakdown = None
    for name, (lengths, placement) in cases.items():
        tokens = [rng.integers(0, vocab, s) for s in lengths]
        lay = build_layout(list(range(len(lengths))), placement, tokens, 0, args.cp, LoopbackExchange(args.cp))
        seen = saved_storages(model, lay)
        total = sum(b for b, _, _ in seen.values())
        out["cases"][name] = {"tokens_on_rank": lay.num_tokens, "saved_bytes": total,
                              "bytes_per_token": total / lay.num_tokens}
        print(f"{name:28s} {lay.num_tokens:6d} tokens on rank 0  {total:12d} bytes  "
              f"{total / lay.num_tokens:10.1f} bytes/token", flush=True)
        if breakdown is None and SHARDED in placement:
            by = Counter()
            for b, shape, node in seen.values():
                by[(shape, node)] += b
            breakdown = [{"shape": list(k[0]), "node": k[1], "bytes": v} for k, v in by.most_common(12)]
            out["largest_storages_" + name.replace(" ", "_")] = breakdown
    if breakdown:
        print("largest saved storages of the first sharded case:")
        for row in breakdown:
            print(f"  {row['bytes']:10d}  {str(tuple(row['shape'])):22s} {row['node']}")
    with atomic_file(args.out) as fh:
        fh.write(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
