"""torchrun-style multi-process launch on one machine (gloo on CPU, nccl on GPU).

``spawn(fn, world_size, *args)`` starts ``world_size`` fresh Python processes, sets the usual
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` variables (so DeepSpeed's
``init_distributed`` and ``torch.distributed`` find them), initialises the default process group,
calls ``fn(rank, world_size, *args)`` and returns the per-rank return values in rank order.

A rank that raises fails the whole launch with that rank's traceback (preceded by the ranks that had
died without a report by then, e.g. killed for memory: a peer's error is often their consequence); a
launch that exceeds ``timeout`` is killed rather than left hanging. With several processes on a
2-core machine each process runs ``torch.set_num_threads(threads_per_rank)`` (1 by default).

``fn`` must be importable by name from a module (not defined in ``__main__`` or a closure): the
processes are started with the ``spawn`` method by default (``start_method="forkserver"`` forks them
from a server that has already imported the heavy modules, see ``components.januspipe.runtime``).

Rendezvous: the ranks meet on a :class:`torch.distributed.FileStore` (the store behind
``init_method="file://..."``) on a fresh file in a directory the parent creates for each launch with
:func:`tempfile.mkdtemp` and removes once the ranks are joined (also after a failure or a time-out,
when a killed rank never got to remove the file itself). No TCP port is bound for the rendezvous, so
concurrent launches on one machine (two tests, two stages) can neither steal each other's port nor
join each other's group; gloo and nccl on one machine both accept it. ``MASTER_ADDR``/``MASTER_PORT``
stay set for code that reads them: the port is one the parent holds bound (not listening) for the
whole launch, so no other process can take it and concurrent launches see distinct values (DeepSpeed
names its shared-memory all-reduce buffers after it), but nothing listens on it: code in a rank must
use the process group that is already initialised (as DeepSpeed's ``init_distributed`` does), not
open a TCP store of its own on ``MASTER_PORT``.
"""
from __future__ import annotations

import gc
import numbers
import os
import pickle
import shutil
import socket
import tempfile
import traceback
from datetime import timedelta
from typing import Any, Callable, Sequence

from components.base import MAX_TIMEOUT_S as MAX_CONFIG_TIMEOUT_S
from components.base import ConfigError, InputError


class LaunchError(RuntimeError):
    """A rank failed or the launch timed out."""


class LaunchTimeout(LaunchError):
    """The launch ran past its ``timeout``: too small a ``timeout_s`` for the work, or a rank that hung
    (e.g. mismatched collectives). Not a user error: the traceback stays and the exit status is 1."""


class RankInputError(LaunchError, InputError):
    """A rank stopped on a :class:`~components.base.ConfigError` or :class:`~components.base.InputError`
    (bad parameter or input data found inside the rank): the rank's message, without its traceback. Any
    other failure of a rank stays a plain :class:`LaunchError` carrying the rank's traceback."""


#: the longest timeout a launch accepts (``timedelta`` and the process-group store cannot take ``inf``)
MAX_TIMEOUT_S = MAX_CONFIG_TIMEOUT_S


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago: bound to port 0, read and closed again.

    Inherently racy: any other process may take the port before the caller binds it. :func:`spawn`
    does not use it; it is kept for tests that hand a port to a server they start (a Prefect server,
    a Flower SuperLink), which then fails to start, visibly, on the rare collision."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reserve_port() -> socket.socket:
    """A socket bound (not listening, no ``SO_REUSEADDR``) to a port of 127.0.0.1: while it is open no
    other socket can bind that port, so the number is this launch's alone. Close it when done."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
    except BaseException:
        s.close()
        raise
    return s


def _worker(rank: int, world_size: int, port: int, store_path: str | None, backend: str | None, threads: int,
            fn: Callable[..., Any], args: Sequence[Any], queue: Any, timeout_s: float) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port), "OMP_NUM_THREADS": str(threads)})
    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    try:
        if backend is not None:
            # what ``init_method=f"file://{store_path}"`` does, without a URL that a temporary directory
            # holding '%', '?' or '#' would break: a FileStore (created by the first rank to open it;
            # the launch's fresh directory guarantees no stale keys) with the launch's timeout
            timeout = timedelta(seconds=timeout_s)
            store = dist.FileStore(store_path, world_size)
            store.set_timeout(timeout)
            dist.init_process_group(backend, rank=rank, world_size=world_size, store=store, timeout=timeout)
            del store   # the group holds it; the last rank to drop it removes the file
        result = fn(rank, world_size, *args)
        queue.put((rank, "ok", pickle.dumps(result)))
    except (ConfigError, InputError) as err:  # the user's parameter or data: the message is the report
        queue.put((rank, "input", f"{type(err).__name__}: {err}"))
    except BaseException as err:  # report every failure to the parent, which re-raises it
        queue.put((rank, "error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}"))
    finally:
        if backend is not None and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:
                pass
        # the rank exits next and the launch waits for it: freeze what is alive (torch, DeepSpeed, the
        # model), so that the interpreter's final collections skip it instead of walking it (about 2 s
        # per rank with DeepSpeed and transformers imported; the result is already in the queue)
        gc.freeze()


def spawn(fn: Callable[..., Any], world_size: int, *args: Any, backend: str | None = "gloo",
          threads_per_rank: int = 1, timeout: float = 600.0, start_method: str = "spawn") -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` processes; return results by rank."""
    if world_size < 1:
        raise ValueError(f"world_size={world_size}: expected an integer >= 1")
    if start_method not in ("spawn", "forkserver"):
        raise ValueError(f"start_method={start_method!r}: expected 'spawn' or 'forkserver'")
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not 0 < float(timeout) <= MAX_TIMEOUT_S:
        raise ConfigError(f"timeout={timeout!r}: expected a finite number of seconds > 0 and <= {MAX_TIMEOUT_S:g} "
                          f"(the launch's timeout, e.g. the stage's timeout_s parameter)")
    import queue as queue_mod
    import time

    import torch.multiprocessing as mp

    ctx = mp.get_context(start_method)
    q = ctx.Queue()
    results: dict[int, Any] = {}
    errors: list[str] = []
    user_error = False
    procs: list[Any] = []   # the started ones
    reported: set[int] = set()   # ranks that put a result or an error on the queue
    peer_report = False   # the first error is a rank's own report (not a death seen by the parent)
    silent = ""   # ranks that died without a report while a peer's error was being reported
    port_holder = _reserve_port()
    store_dir = None
    try:
        port = port_holder.getsockname()[1]
        store_path = None
        if backend is not None:   # a fresh directory per launch: the store file does not exist yet
            store_dir = tempfile.mkdtemp(prefix="paperworks-launch-")
            store_path = os.path.join(store_dir, "store")
        for r in range(world_size):
            p = ctx.Process(target=_worker, args=(r, world_size, port, store_path, backend, threads_per_rank, fn,
                                                  tuple(args), q, timeout), daemon=False)
            p.start()
            procs.append(p)
        deadline = time.monotonic() + timeout
        while len(results) + len(errors) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LaunchTimeout(f"launch of {fn.__qualname__} on {world_size} ranks timed out after {timeout:.0f} s; "
                                    f"expected it to finish within timeout={timeout:g} s (raise the stage's "
                                    f"timeout_s parameter if the work needs longer; otherwise a rank hung)")
            # ranks that had exited before this get: a rank that exits normally has flushed its report
            # into the queue first, so once the queue is empty, one of them that never reported never will
            exited = [r for r, p in enumerate(procs) if p.exitcode is not None]
            try:
                rank, status, payload = q.get(timeout=min(remaining, 1.0))
            except queue_mod.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                vanished = [r for r in exited if r not in reported]
                if dead and not errors:
                    # a rank died without reporting (segfault, OOM kill)
                    errors.append(f"rank {procs.index(dead[0])} exited with code {dead[0].exitcode}")
                elif vanished and not errors:
                    # it exited with status 0 and no result (os._exit(0) in the rank's code): without
                    # this the launch would wait for its timeout
                    errors.append(f"rank {vanished[0]} exited with code 0 without a result")
                if errors:
                    break
                continue
            reported.add(rank)
            if status == "ok":
                results[rank] = pickle.loads(payload)
            elif status == "input":
                errors.append(f"rank {rank}: {payload}")
                user_error = peer_report = True
                break
            else:
                errors.append(f"rank {rank} failed: {payload}")
                peer_report = True
                break  # peers may now block forever on a collective; stop them below
    finally:
        try:
            for p in procs:
                p.join(timeout=5 if not errors else 0.5)
            if peer_report:
                # a rank that dies without a word (os._exit, segfault, OOM kill) makes its peers fail
                # too ("connection closed by peer"), and a peer's report can reach the queue before the
                # death is seen: name the dead rank, it is the likelier first failure
                silent = "; ".join(f"rank {r} exited with code {p.exitcode} without a report"
                                   for r, p in enumerate(procs) if r not in reported and p.exitcode not in (None, 0))
            for p in procs:
                if p.is_alive():
                    p.kill()
                    p.join()
        finally:
            port_holder.close()
            if store_dir is not None:   # a killed rank leaves the store file behind
                shutil.rmtree(store_dir, ignore_errors=True)
    if errors:
        message = errors[0] if not silent else f"{silent} (likely the first failure); then {errors[0]}"
        raise (RankInputError if user_error else LaunchError)(message)
    return [results[r] for r in range(world_size)]
