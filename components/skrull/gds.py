"""GDS — Global Data Scheduling (Skrull Alg. 2) and the full Skrull scheduler (GDS + DACP).

The scope is one **global batch**: the set of sequences of an optimizer step never changes, only
which DP rank and micro-batch processes each one (the paper's condition for optimizer equivalence).
Design principles (paper §4): (i) FLOPs-based bin-packing across DP ranks; (ii) pair long and short
sequences inside each micro-batch by a strided split of the length-sorted subset; (iii) use as few
micro-batches as memory allows (start from the memory lower bound) and add one whenever DACP
cannot place a micro-batch (roll-back at the GDS level).
"""
from __future__ import annotations

import heapq
import math
from typing import Callable, Sequence

import numpy as np

from components.skrull.cost_model import CostModel
from components.skrull.dacp import DACPInfeasible, dacp_place
from components.skrull.schedule import MicroBatch, Schedule, check_batch

Placer = Callable[..., tuple[int, ...]]


def binpack(weights: Sequence[float], bins: int) -> list[list[int]]:
    """Balanced partition by LPT greedy: heaviest first onto the least-loaded bin [R: the paper
    does not name its bin-packing variant; LPT is the standard 4/3-approximation]."""
    heap = [(0.0, b) for b in range(bins)]
    out: list[list[int]] = [[] for _ in range(bins)]
    for k in sorted(range(len(weights)), key=lambda k: (-weights[k], k)):
        load, b = heapq.heappop(heap)
        out[b].append(k)
        heapq.heappush(heap, (load + float(weights[k]), b))
    return out


def gds_microbatches(subset: Sequence[int], lengths: np.ndarray, cp: int, cost: CostModel,
                     placer: Placer = dacp_place, rollback: bool = True,
                     isolate: bool = True) -> tuple[MicroBatch, ...]:
    """Alg. 2 on one DP rank: the fewest strided micro-batches that fit ``C·N`` and that DACP places.

    [R: deviation] A sequence that cannot share a micro-batch with even the shortest other one
    (``len + shortest > C·N``) gets a micro-batch of its own *before* the strided split. Every
    feasible schedule must isolate it anyway, but Alg. 2 as printed cannot: the strided split puts
    it next to other sequences until ``m`` reaches the number of sequences, i.e. one sequence per
    micro-batch for the whole rank. Where no sequence comes that close to ``C·N`` (the paper's
    settings) this changes nothing. ``isolate=False`` is Alg. 2 as printed (for the ablation).
    """
    if not subset:
        return ()
    bucket = cost.bucket_size
    capacity = bucket * cp
    subset = sorted(subset, key=lambda k: (lengths[k], k))                       # ascending
    alone: list[int] = []
    while isolate and len(subset) > 1 and int(lengths[subset[-1]]) + int(lengths[subset[0]]) > capacity:
        alone.append(subset.pop())                                               # fills the group
    singles = [MicroBatch((k,), placer([int(lengths[k])], cp, bucket, cost, rollback)) for k in alone]
    m = max(1, math.ceil(int(lengths[subset].sum()) / capacity))                 # memory lower bound
    while m <= len(subset):
        # long + short mixed; each micro-batch in the global batch's order (the input order Alg. 4,
        # round-robin, places in; DACP sorts by length itself, so its placement does not change)
        mbs = [sorted(subset[j::m]) for j in range(m)]
        if any(int(lengths[mb].sum()) > capacity for mb in mbs):               # memory check first (cheap)
            m += 1
            continue
        try:
            out = [MicroBatch(tuple(mb), placer([int(lengths[k]) for k in mb], cp, bucket, cost, rollback))
                   for mb in mbs]
            return tuple(singles + out)
        except DACPInfeasible:
            m += 1                                                               # roll back: one more
    raise DACPInfeasible(f"no split of {len(subset) + len(alone)} sequences fits the bucket C={bucket} "
                         f"(rollback={rollback})")


def skrull_schedule(lengths: Sequence[int], dp: int, cp: int, cost: CostModel, *,
                    placer: Placer = dacp_place, rollback: bool = True, isolate: bool = True,
                    name: str = "skrull") -> Schedule:
    """Skrull: GDS across DP ranks and micro-batches, DACP inside every micro-batch (``isolate``:
    see :func:`gds_microbatches`)."""
    arr = check_batch(lengths, dp, cp, cost.bucket_size)
    bins = binpack([cost.flops_time(s) for s in arr], dp)
    ranks = tuple(gds_microbatches(b, arr, cp, cost, placer, rollback, isolate) for b in bins)
    return Schedule(name=name, dp=dp, cp=cp, ranks=ranks)
