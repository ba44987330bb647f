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


def sleep_rank(rank: int, world: int, seconds: float):
    import time

    time.sleep(seconds)
    return rank


def bad_input_on_rank(rank: int, world: int, bad: int):
    from components.base import InputError

    if rank == bad:
        raise InputError("shard.json: missing; expected the data stage's shard")
    return rank
