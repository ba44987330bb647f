"""Baseline schedulers, all over the same global batch and the same BucketSize C.

* **deepspeed** — DeepSpeed-style context parallelism: the DP ranks take the global batch in
  DistributedSampler order (rank i gets sequences i, i+dp, …), cut into fixed micro-batches of
  ``b`` sequences (sequence packing inside a micro-batch), every sequence sharded over the CP group.
  ``b`` is a run-wide setting: :func:`best_fixed_micro_batch` picks the fastest ``b`` that never
  exceeds C on any batch of the run (an oracle choice — generous to the baseline).
* **packed** — the same, but micro-batches packed greedily to the token budget in input order
  (variable micro-batch count; a stronger baseline than the issue asks for, reported for honesty).
* **sorted** — LongAlign's sorted batching: the global batch sorted by length and cut into
  consecutive groups of ``b`` that are dealt to DP ranks in a seeded random order [R: kept inside the
  global batch so that the optimizer step is unchanged]; every sequence sharded.
* **dacp_only** — DeepSpeed's micro-batches (its chosen ``b``) with DACP placement inside each
  (the paper's "DACP without GDS" step).
* **round_robin** — GDS micro-batches with Alg. 4 placement (the case-study baseline).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from components.base import InputError
from components.skrull.cost_model import CostModel, shard_sizes
from components.skrull.dacp import DACPInfeasible, all_sharded, dacp_place, round_robin_place
from components.skrull.gds import skrull_schedule
from components.skrull.schedule import MicroBatch, Schedule, check_batch, check_degree, price


def _fixed(rank_indices: Sequence[Sequence[int]], b: int, arr: np.ndarray, cp: int, cost: CostModel,
           placer, name: str, dp: int) -> Schedule:
    ranks = []
    for idx in rank_indices:
        mbs = [list(idx[j:j + b]) for j in range(0, len(idx), b)]
        ranks.append(tuple(MicroBatch(tuple(mb), placer([int(arr[k]) for k in mb], cp, cost.bucket_size, cost))
                           for mb in mbs))
    return Schedule(name=name, dp=dp, cp=cp, ranks=tuple(ranks))


def deepspeed_schedule(lengths: Sequence[int], dp: int, cp: int, cost: CostModel, micro_batch_size: int,
                       placer=all_sharded, name: str = "deepspeed") -> Schedule:
    """Fixed micro-batches of ``micro_batch_size`` sequences in DistributedSampler order.
    Raises :class:`DACPInfeasible` when a micro-batch exceeds the bucket (out of memory), and
    :class:`ConfigError` unless ``micro_batch_size`` is an integer >= 1."""
    arr = check_batch(lengths, dp, cp, cost.bucket_size)
    micro_batch_size = check_degree("micro_batch_size", micro_batch_size, "expected an integer >= 1 sequences")
    return _fixed([list(range(i, len(arr), dp)) for i in range(dp)], micro_batch_size, arr, cp, cost, placer, name, dp)


def dacp_only_schedule(lengths, dp, cp, cost, micro_batch_size) -> Schedule:
    return deepspeed_schedule(lengths, dp, cp, cost, micro_batch_size, placer=dacp_place, name="dacp_only")


def sorted_schedule(lengths: Sequence[int], dp: int, cp: int, cost: CostModel, micro_batch_size: int,
                    seed: int = 0) -> Schedule:
    """LongAlign sorted batching inside the global batch (see the module docstring)."""
    arr = check_batch(lengths, dp, cp, cost.bucket_size)
    micro_batch_size = check_degree("micro_batch_size", micro_batch_size, "expected an integer >= 1 sequences")
    order = sorted(range(len(arr)), key=lambda k: (arr[k], k))
    groups = [order[j:j + micro_batch_size] for j in range(0, len(order), micro_batch_size)]
    perm = np.random.default_rng(seed).permutation(len(groups))
    ranks: list[list[MicroBatch]] = [[] for _ in range(dp)]
    for n, g in enumerate(perm):
        mb = groups[g]
        ranks[n % dp].append(MicroBatch(tuple(mb), all_sharded([int(arr[k]) for k in mb], cp, cost.bucket_size)))
    return Schedule(name="sorted", dp=dp, cp=cp, ranks=tuple(tuple(r) for r in ranks))


def packed_schedule(lengths: Sequence[int], dp: int, cp: int, cost: CostModel) -> Schedule:
    """DistributedSampler order, every sequence sharded, micro-batches packed up to C per rank."""
    arr = check_batch(lengths, dp, cp, cost.bucket_size)
    ranks = []
    for i in range(dp):
        mbs, cur, tokens = [], [], [0] * cp
        for k in range(i, len(arr), dp):
            sh = shard_sizes(int(arr[k]), cp)
            if cur and any(t + s > cost.bucket_size for t, s in zip(tokens, sh)):
                mbs.append(cur)
                cur, tokens = [], [0] * cp
            cur.append(k)
            tokens = [t + s for t, s in zip(tokens, sh)]
        if cur:
            mbs.append(cur)
        ranks.append(tuple(MicroBatch(tuple(mb), all_sharded([int(arr[k]) for k in mb], cp, cost.bucket_size))
                           for mb in mbs))
    return Schedule(name="packed", dp=dp, cp=cp, ranks=tuple(ranks))


def round_robin_schedule(lengths, dp, cp, cost) -> Schedule:
    return skrull_schedule(lengths, dp, cp, cost, placer=round_robin_place, name="round_robin")


@dataclass(frozen=True)
class FixedChoice:
    micro_batch_size: int
    total_s: float                       # summed simulated iteration time over the batches
    tried: tuple[tuple[int, float | None], ...]   # (b, total seconds or None when out of memory)


def best_fixed_micro_batch(batches: Sequence[Sequence[int]], dp: int, cp: int, cost: CostModel,
                           build: Callable[[Sequence[int], int], Schedule]) -> FixedChoice:
    """The fastest run-wide micro-batch size ``b`` that fits the bucket on every batch.

    ``build(lengths, b)`` makes one batch's schedule. Every ``b`` from 1 to the per-rank batch size is
    tried (the baseline's tuning budget); a ``b`` that overflows C on any batch is out.
    """
    dp = check_degree("parallel degree dp", dp)
    if not len(batches):
        raise InputError("best fixed micro-batch size: no batches; expected at least one global batch")
    per_rank = max(-(-len(b) // dp) for b in batches)
    tried, best = [], None
    for b in range(1, per_rank + 1):
        try:
            total = sum(price(build(lengths, b), lengths, cost).iteration_s for lengths in batches)
        except DACPInfeasible:
            tried.append((b, None))
            continue
        tried.append((b, total))
        if best is None or total < best[1]:
            best = (b, total)
    if best is None:
        raise DACPInfeasible("no fixed micro-batch size fits the bucket on every batch")
    return FixedChoice(micro_batch_size=best[0], total_s=best[1], tried=tuple(tried))
