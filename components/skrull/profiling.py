"""Offline profiling on this machine → the CPU cost model (Skrull App. C, done here for real).

* **Compute**: forward + backward CPU time (one thread, ``time.thread_time`` — on a shared machine
  wall time measures the neighbours) of the real model and DACP attention on one rank, for packed
  micro-batches of ``n`` sequences of length ``S`` kept whole, or sharded over a CP group of N
  (a :class:`LoopbackExchange` stands in for the peers, so every tensor has its real size). A
  non-negative least-squares fit gives ``c_mb + n_local·c_seq + n_shard·c_seq_shard + tokens·c_tok +
  attention·c_quad`` (tokens = S per local, S/N per sharded sequence; attention = S² resp. S²/N).
* **Activation memory**: bytes of the tensors autograd saves for the backward (parameters
  excluded), measured with ``saved_tensors_hooks``; a linear fit gives α of ``Mem(S) = α·S + β`` and
  the BucketSize ``C = budget / α``.
* **Communication**: a gloo micro-benchmark of all-gather and reduce-scatter versus message size
  on the CP group (:func:`comm_worker`, run under ``tasks.launch.spawn``), fitted to Eq. 16.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from components.base import InputError
from components.skrull.cost_model import SHARDED, CommModel, CostModel

Progress = Callable[..., None]


def _saved_bytes_counter(model):
    """A ``saved_tensors_hooks`` pair counting distinct non-parameter storages saved for backward."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        if isinstance(t, torch.Tensor):
            st = t.untyped_storage()
            ptr = st.data_ptr()
            if ptr not in params and ptr not in seen:
                seen[ptr] = st.nbytes()
        return t

    return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), seen


def measure_microbatch(model, lengths: Sequence[int], placement: Sequence[int], cp: int, vocab: int,
                       reps: int, rng: np.random.Generator) -> tuple[float, int, int]:
    """(median fwd+bwd CPU seconds, saved activation bytes, tokens on the rank) for rank 0's share."""
    from components.skrull.context_parallel import LoopbackExchange, build_layout, microbatch_loss

    tokens = [rng.integers(0, vocab, int(s)) for s in lengths]
    lay = build_layout(list(range(len(lengths))), placement, tokens, 0, cp, LoopbackExchange(cp))
    hooks, seen = _saved_bytes_counter(model)
    with hooks:
        loss = microbatch_loss(model, lay)
    loss.backward()                                  # warm-up + memory
    mem = sum(seen.values())
    times = []
    for _ in range(reps):
        model.zero_grad(set_to_none=True)
        t0 = time.thread_time()        # CPU time of this (single) compute thread: what the step costs on an
        microbatch_loss(model, lay).backward()   # idle core, robust to other processes sharing the machine
        times.append(time.thread_time() - t0)
    model.zero_grad(set_to_none=True)
    return statistics.median(times), mem, lay.num_tokens


def profile_compute(model_cfg: Mapping[str, Any], vocab: int, cp: int, lengths: Sequence[int],
                    tokens_per_config: int, reps: int, seed: int,
                    progress: Progress | None = None) -> list[dict[str, Any]]:
    """Time and memory of local-only and sharded-only micro-batches over a grid of lengths."""
    import torch

    from components.skrull.model import build_model

    say = progress or (lambda *a: None)
    max_len = int(max(lengths))
    model = build_model(model_cfg, vocab, max(2 * max_len, 16), seed)
    rng = np.random.default_rng(seed)
    rows = []
    configs = []
    for s in lengths:
        n_many = max(1, tokens_per_config // int(s))
        for n in sorted({1, n_many}):
            configs.append(("local", int(s), n))
            if s >= 2 * cp and cp > 1:
                configs.append(("sharded", int(s), n))
    torch.manual_seed(seed)
    for i, (kind, s, n) in enumerate(configs):
        placement = [0] * n if kind == "local" else [SHARDED] * n
        sec, mem, toks = measure_microbatch(model, [s] * n, placement, cp, vocab, reps, rng)
        rows.append({"kind": kind, "length": s, "n": n, "tokens_on_rank": toks, "seconds": sec, "saved_bytes": mem})
        if i % 4 == 0 or i == len(configs) - 1:
            say("profile compute %d/%d: %s n=%d S=%d -> %.1f ms, %.2f MB saved", i + 1, len(configs), kind, n, s,
                sec * 1e3, mem / 2**20)
    return rows


def fit_compute(rows: Sequence[Mapping[str, Any]], cp: int) -> dict[str, float]:
    """Non-negative least squares: seconds ≈ c_mb + n_loc·c_seq + n_sh·c_seq_shard + tok·c_tok + att·c_quad."""
    from scipy.optimize import nnls

    if len(rows) < 5:
        raise InputError(f"compute profile: {len(rows)} points; expected at least 5 to fit 5 coefficients")
    A, y = [], []
    for r in rows:
        s, n = float(r["length"]), float(r["n"])
        if r["kind"] == "local":
            A.append([1.0, n, 0.0, n * s, n * s * s])
        else:
            A.append([1.0, 0.0, n, n * s / cp, n * s * s / cp])
        y.append(float(r["seconds"]))
    A, y = np.asarray(A), np.asarray(y)
    # relative least squares: every point weighs the same whatever its duration
    w = 1.0 / y
    coef, _ = nnls(A * w[:, None], y * w)
    pred = A @ coef
    return {"c_mb": coef[0], "c_seq": coef[1], "c_seq_shard": coef[2], "c_tok": coef[3], "c_quad": coef[4],
            "mape": float(np.mean(np.abs(pred - y) / y))}


def fit_memory(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """α, β of Mem = α·tokens + β over the local-only points (bytes)."""
    pts = [(r["tokens_on_rank"], r["saved_bytes"]) for r in rows if r["kind"] == "local"]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        raise InputError(f"memory profile: {len(pts)} local points; expected at least two token counts")
    x, y = np.asarray(pts, dtype=float).T
    alpha, beta = np.polyfit(x, y, 1)
    return {"alpha_bytes_per_token": float(max(alpha, 1.0)), "beta_bytes": float(beta)}


def comm_worker(rank: int, world_size: int, sizes_bytes: Sequence[int], reps: int) -> dict[str, list[float]]:
    """Median seconds of all-gather and reduce-scatter (float32) per total message size."""
    import torch
    import torch.distributed as dist

    out: dict[str, list[float]] = {"all_gather": [], "reduce_scatter": []}
    for nbytes in sizes_bytes:
        per_rank = max(1, int(nbytes) // 4 // world_size)
        small, big = torch.ones(per_rank), torch.ones(per_rank * world_size)
        for name, fn in (("all_gather", lambda: dist.all_gather_single(big, small)),
                         ("reduce_scatter", lambda: dist.reduce_scatter_single(small, big))):
            fn()
            ts = []
            for _ in range(reps):
                dist.barrier()
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            out[name].append(statistics.median(ts))
    return out


def local_cost_model(name: str, model_cfg: Mapping[str, Any], compute: Mapping[str, float],
                     memory: Mapping[str, float], comm: Mapping[str, CommModel], budget_bytes: float,
                     bytes_per_value: int = 4, grad_bytes: float = 0.0) -> CostModel:
    """The CPU cost model from the fits above. ``grad_bytes``: the gradients ZeRO-2 reduce-scatters in
    every backward (DeepSpeed stage 2 reduces per micro-batch), charged to each micro-batch."""
    head_dim = model_cfg["hidden_size"] // model_cfg["num_heads"]
    zero2 = comm["reduce_scatter"].time(grad_bytes)
    return CostModel(
        name=name, layers=int(model_cfg["num_layers"]),
        kv_bytes_per_token=2 * model_cfg["num_kv_heads"] * head_dim * bytes_per_value,
        c_tok=float(compute["c_tok"]), c_quad=float(compute["c_quad"]), c_seq=float(compute["c_seq"]),
        c_seq_shard=float(compute["c_seq_shard"]), c_mb=float(compute["c_mb"]) + zero2,
        mem_bytes_per_token=float(memory["alpha_bytes_per_token"]), mem_budget_bytes=float(budget_bytes),
        all_gather=comm["all_gather"], reduce_scatter=comm["reduce_scatter"],
        notes="fitted from offline profiling on this machine (fp32, 1 thread per rank, gloo)",
        meta={"fit_mape": float(compute.get("mape", 0.0)), "c_mb_compute": float(compute["c_mb"]),
              "c_mb_zero2_reduce": zero2, "grad_bytes": float(grad_bytes)})
