"""Rank functions for test_launch (importable by spawned processes)."""
from __future__ import annotations


def all_reduce_rank(rank: int, world: int, base: int):
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(base + rank)])
    dist.all_reduce(t)
    return rank, world, float(t.item())


def fail_on_rank(rank: int, world: int, bad: int):
    if rank == bad:
        raise ValueError("bad shard")
    return rank
