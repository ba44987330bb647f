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


def store_files(rank: int, world: int, parent: str):
    """The files under ``parent`` (the launching process's temporary directory) while the group is up."""
    import os

    import torch.distributed as dist

    dist.barrier()
    return sorted(os.path.relpath(os.path.join(d, f), parent) for d, _, fs in os.walk(parent) for f in fs)


def meet(rank: int, world: int, base: int, meet_dir: str, ranks_in_all: int):
    """All-reduce, then wait (up to 60 s) until ``ranks_in_all`` ranks of all launches have checked in
    under ``meet_dir`` - the launches are provably up at the same time - then all-reduce again. Returns
    (rank, world, both sums, MASTER_PORT)."""
    import os
    import time

    import torch
    import torch.distributed as dist

    t = torch.tensor([float(base + rank)])
    dist.all_reduce(t)
    open(os.path.join(meet_dir, f"{base}-{rank}"), "w").close()
    deadline = time.monotonic() + 60
    while len(os.listdir(meet_dir)) < ranks_in_all:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {sorted(os.listdir(meet_dir))} checked in")
        time.sleep(0.05)
    u = torch.tensor([float(base * 100 + rank)])
    dist.all_reduce(u)
    return rank, world, float(t.item()), float(u.item()), int(os.environ["MASTER_PORT"])


def bind_master_port(rank: int, world: int):
    """Try to bind MASTER_PORT (as SO_REUSEADDR servers do): True when the port is taken."""
    import errno
    import os
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", int(os.environ["MASTER_PORT"])))
        except OSError as err:
            return err.errno == errno.EADDRINUSE
        return False


def exit_on_rank(rank: int, world: int, bad: int):
    """Rank ``bad`` dies without a word once the group is up (no FileStore clean-up); the others sleep
    (no collective, which would notice the dead peer and report first) until the launch kills them."""
    import os
    import time

    if rank == bad:
        os._exit(3)
    time.sleep(60)
    return rank


def exit_quietly_on_rank(rank: int, world: int, bad: int):
    """Rank ``bad`` ends its process with status 0 and no result; the others sleep (120 s) until killed."""
    import os
    import time

    if rank == bad:
        os._exit(0)
    time.sleep(120)
    return rank


def exit_then_peer_fails(rank: int, world: int, flag_dir: str):
    """Rank 0 leaves a file and dies without a word; the other ranks wait for the file, then for rank 0's
    process to be gone, and raise (as a collective on the dead peer does: "connection closed by peer")."""
    import os
    import time

    flag = os.path.join(flag_dir, "rank0")
    if rank == 0:
        with open(flag, "w") as f:
            f.write(str(os.getpid()))
        os._exit(3)
    deadline = time.monotonic() + 60
    while not os.path.exists(flag) or not open(flag).read():
        if time.monotonic() > deadline:
            raise TimeoutError("rank 0 never wrote its file")
        time.sleep(0.01)
    time.sleep(0.05)
    raise RuntimeError("connection closed by peer")


def freeze_count_at_exit(rank: int, world: int, prefix: str):
    """Write, when this rank's interpreter exits, how many objects the collector has frozen then."""
    import atexit
    import gc
    from pathlib import Path

    atexit.register(lambda: Path(f"{prefix}.{rank}").write_text(str(gc.get_freeze_count())))
    return gc.get_freeze_count()
