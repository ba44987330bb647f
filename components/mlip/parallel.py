"""Graph parallelism (GP): atom features gathered across the ranks that share one batch.

Rank ``g`` of a GP group owns a contiguous range of the batch's atoms (see
:meth:`components.mlip.graph.AtomGraph.partition`). A layer needs the features of every neighbour,
so each layer calls :meth:`GraphParallel.gather` once. The collective is an autograd function whose
backward is again a differentiable collective, so the *double* backward of conservative training
works (as fairchem's ``gp_utils`` does for GemNet-XL):

- ``gather``:   ``x_full = concat_g x_g``                    (all-gather, ranges of unequal size)
- its VJP:      ``x̄_g = (sum over ranks of x̄_full)[range_g]`` (all-reduce, then slice)
- and the VJP of that is ``gather`` again.

Each rank computes only its local part of the energy; seeding the backward from the *local* energy
and summing position gradients across the group gives the exact forces (seeding from a replicated,
all-reduced energy would count every contribution ``G`` times).
"""
from __future__ import annotations

from typing import Any

import torch


class GraphParallel:
    """No graph parallelism: the local atoms are all the atoms."""

    size = 1

    def gather(self, x_local: torch.Tensor, graph: Any) -> torch.Tensor:
        return x_local

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        return t


class DistributedGraphParallel(GraphParallel):
    """Graph parallelism over a ``torch.distributed`` process group."""

    def __init__(self, group: Any):
        import torch.distributed as dist

        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def gather(self, x_local: torch.Tensor, graph: Any) -> torch.Tensor:
        if self.size == 1:
            return x_local
        return _GatherAtoms.apply(x_local, self.group, tuple(graph.part_ranges), self.rank)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of a (non-differentiated) tensor over the group."""
        import torch.distributed as dist

        if self.size > 1:
            t = t.clone()
            dist.all_reduce(t, group=self.group)
        return t


def _all_gather_ranges(x: torch.Tensor, group: Any, ranges: tuple[tuple[int, int], ...]) -> torch.Tensor:
    import torch.distributed as dist

    width = max(b - a for a, b in ranges)
    pad = x.new_zeros((width,) + tuple(x.shape[1:]))
    pad[: x.shape[0]] = x
    parts = [torch.empty_like(pad) for _ in ranges]
    dist.all_gather(parts, pad.contiguous(), group=group)
    return torch.cat([p[: b - a] for p, (a, b) in zip(parts, ranges)], dim=0)


class _GatherAtoms(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_local, group, ranges, rank):  # type: ignore[override]
        ctx.group, ctx.ranges, ctx.rank = group, ranges, rank
        return _all_gather_ranges(x_local, group, ranges)

    @staticmethod
    def backward(ctx, grad_full):  # type: ignore[override]
        return _ReduceSliceAtoms.apply(grad_full, ctx.group, ctx.ranges, ctx.rank), None, None, None


class _ReduceSliceAtoms(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_full, group, ranges, rank):  # type: ignore[override]
        import torch.distributed as dist

        ctx.group, ctx.ranges, ctx.rank = group, ranges, rank
        total = x_full.contiguous().clone()
        dist.all_reduce(total, group=group)
        a, b = ranges[rank]
        return total[a:b].clone()

    @staticmethod
    def backward(ctx, grad_local):  # type: ignore[override]
        return _GatherAtoms.apply(grad_local, ctx.group, ctx.ranges, ctx.rank), None, None, None
