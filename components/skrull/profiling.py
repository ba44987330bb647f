"""Offline profiling on this machine → the CPU cost model (Skrull App. C, done here for real).

* **Compute**: forward + backward CPU time (one thread, ``time.thread_time`` — on a shared machine
  wall time measures the neighbours) of the real model and DACP attention on one rank, for packed
  micro-batches of ``n`` sequences of length ``S`` kept whole, or sharded over a CP group of N
  (a :class:`LoopbackExchange` stands in for the peers, so every tensor has its real size). The
  design (:func:`compute_design`) sweeps ``n`` = 1, 2, 4, … up to ``tokens_per_config // S`` at every
  length, so the per-micro-batch, per-sequence, per-token and per-token² terms vary independently
  (with only ``n`` = 1 and ``n·S`` = const, c_seq was barely determined). The timed repetitions are
  interleaved: every pass times each point once, in a seeded shuffled order, and a point's time is
  the fastest of its passes. The machine's speed drifts by tens of per cent within a minute even in
  thread CPU time (shared VM); interleaving spreads a slow spell over the whole grid instead of one
  region of it, and the minimum discards it (the noise only ever adds time).
  A relative non-negative least-squares fit gives ``c_mb + n_local·c_seq + n_shard·c_seq_shard +
  tokens·c_tok + attention·c_quad`` (tokens = S per local, S/N per sharded sequence; attention = S²
  resp. S²/N), each coefficient with a bootstrap standard deviation and the design's condition number.
* **Activation memory**: bytes of the tensors autograd saves for the backward (parameters
  excluded), measured with ``saved_tensors_hooks``; a linear fit gives α of ``Mem(S) = α·S + β`` and
  the BucketSize ``C = budget / α``.
* **Communication**: a gloo micro-benchmark of all-gather and reduce-scatter versus message size
  on the CP group (:func:`comm_worker`, run under ``tasks.launch.spawn``; interleaved passes, the
  fastest per size, as for compute), fitted to Eq. 16 (:meth:`CommModel.fit`); :func:`comm_fit_report`
  gives the fit's relative error at every measured size.
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


def _prepare(model, lengths: Sequence[int], placement: Sequence[int], cp: int, vocab: int,
             rng: np.random.Generator):
    """Rank 0's layout for the micro-batch, after one untimed (warm-up) step that counts the saved bytes."""
    from components.skrull.context_parallel import LoopbackExchange, build_layout, microbatch_loss

    tokens = [rng.integers(0, vocab, int(s)) for s in lengths]
    lay = build_layout(list(range(len(lengths))), placement, tokens, 0, cp, LoopbackExchange(cp))
    hooks, seen = _saved_bytes_counter(model)
    with hooks:
        loss = microbatch_loss(model, lay)
    loss.backward()                                  # warm-up + memory
    model.zero_grad(set_to_none=True)
    return lay, sum(seen.values())


def _time_step(model, lay) -> float:
    """CPU seconds of one forward + backward of ``lay``."""
    from components.skrull.context_parallel import microbatch_loss

    model.zero_grad(set_to_none=True)
    t0 = time.thread_time()            # CPU time of this (single) compute thread: what the step costs on an
    microbatch_loss(model, lay).backward()   # idle core, robust to other processes sharing the machine
    sec = time.thread_time() - t0
    model.zero_grad(set_to_none=True)
    return sec


def measure_microbatch(model, lengths: Sequence[int], placement: Sequence[int], cp: int, vocab: int,
                       reps: int, rng: np.random.Generator) -> tuple[float, int, int]:
    """(median fwd+bwd CPU seconds, saved activation bytes, tokens on the rank) for rank 0's share."""
    lay, mem = _prepare(model, lengths, placement, cp, vocab, rng)
    times = [_time_step(model, lay) for _ in range(reps)]
    return statistics.median(times), mem, lay.num_tokens


DESIGNS = ("powers_of_two", "endpoints")


def compute_design(lengths: Sequence[int], tokens_per_config: int, cp: int,
                   design: str = "powers_of_two") -> list[tuple[str, int, int]]:
    """The profiled points ``(kind, S, n)``: per length ``S``, ``n`` = 1, 2, 4, … and ``n_max =
    max(1, tokens_per_config // S)`` (``"powers_of_two"``), or only ``n`` ∈ {1, n_max}
    (``"endpoints"``, the earlier design: its many-sequence points all hold the same n·S tokens);
    each ``n`` local and, where ``S ≥ 2·cp`` and ``cp > 1``, sharded."""
    if design not in DESIGNS:
        raise InputError(f"compute design {design!r}: expected one of {', '.join(DESIGNS)}")
    if tokens_per_config < 1 or cp < 1 or not lengths or any(int(s) < 1 for s in lengths):
        raise InputError(f"compute design: lengths {list(lengths)}, tokens_per_config {tokens_per_config}, cp {cp}: "
                         f"expected positive integers")
    configs = []
    for s in sorted({int(x) for x in lengths}):
        n_max = max(1, tokens_per_config // s)
        if design == "endpoints":
            ns = sorted({1, n_max})
        else:
            ns = sorted({2 ** i for i in range(n_max.bit_length()) if 2 ** i <= n_max} | {n_max})
        for n in ns:
            configs.append(("local", s, n))
            if s >= 2 * cp and cp > 1:
                configs.append(("sharded", s, n))
    return configs


def profile_compute(model_cfg: Mapping[str, Any], vocab: int, cp: int, lengths: Sequence[int],
                    tokens_per_config: int, reps: int, seed: int,
                    progress: Progress | None = None, design: str = "powers_of_two") -> list[dict[str, Any]]:
    """Time and memory of local-only and sharded-only micro-batches over :func:`compute_design`.

    One untimed pass (warm-up, saved bytes), then ``reps`` passes that time every point once each in
    a seeded random order; a point's ``seconds`` is the fastest of its passes (see the module doc)."""
    import torch

    from components.skrull.model import build_model

    say = progress or (lambda *a: None)
    configs = compute_design(lengths, tokens_per_config, cp, design)
    if reps < 1:
        raise InputError(f"compute profile: repeats={reps}; expected at least 1")
    max_len = int(max(lengths))
    model = build_model(model_cfg, vocab, max(2 * max_len, 16), seed)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    prepared = []
    for kind, s, n in configs:
        placement = [0] * n if kind == "local" else [SHARDED] * n
        prepared.append(_prepare(model, [s] * n, placement, cp, vocab, rng))
    times: list[list[float]] = [[] for _ in configs]
    for rep in range(reps):
        for i in rng.permutation(len(configs)):
            times[i].append(_time_step(model, prepared[i][0]))
        say("profile compute pass %d/%d: %d points", rep + 1, reps, len(configs))
    rows = []
    for (kind, s, n), (lay, mem), ts in zip(configs, prepared, times):
        rows.append({"kind": kind, "length": s, "n": n, "tokens_on_rank": lay.num_tokens,
                     "seconds": min(ts), "saved_bytes": mem})
    return rows


COMPUTE_TERMS = ("c_mb", "c_seq", "c_seq_shard", "c_tok", "c_quad")


def compute_features(rows: Sequence[Mapping[str, Any]], cp: int) -> tuple[np.ndarray, np.ndarray]:
    """Design matrix (columns :data:`COMPUTE_TERMS`) and measured seconds of the compute points."""
    A, y = [], []
    for r in rows:
        s, n = float(r["length"]), float(r["n"])
        if r["kind"] == "local":
            A.append([1.0, n, 0.0, n * s, n * s * s])
        elif r["kind"] == "sharded":
            A.append([1.0, 0.0, n, n * s / cp, n * s * s / cp])
        else:
            raise InputError(f"compute point {dict(r)}: kind must be 'local' or 'sharded'")
        y.append(float(r["seconds"]))
    A, y = np.asarray(A, dtype=float), np.asarray(y, dtype=float)
    if (y <= 0).any() or not np.isfinite(y).all():
        raise InputError("compute profile: every point needs a positive, finite time")
    return A, y


def _nnls_relative(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    w = 1.0 / y             # relative least squares: every point weighs the same whatever its duration
    return nnls(A * w[:, None], y * w)[0]


def fit_compute(rows: Sequence[Mapping[str, Any]], cp: int, bootstrap: int = 200,
                seed: int = 0) -> dict[str, Any]:
    """Non-negative least squares: seconds ≈ c_mb + n_loc·c_seq + n_sh·c_seq_shard + tok·c_tok + att·c_quad.

    Returns the five coefficients and ``mape`` (as before) plus, per coefficient, ``<name>_sd``: the
    standard deviation over ``bootstrap`` refits on points resampled with replacement (seeded, so
    deterministic; None when ``bootstrap`` < 2), ``n_points``, ``bootstrap``, and ``condition_number``: that of the relatively
    weighted design with unit-norm columns (scale-free; large = some terms are not separable)."""
    if len(rows) < 5:
        raise InputError(f"compute profile: {len(rows)} points; expected at least 5 to fit 5 coefficients")
    if bootstrap < 0:
        raise InputError(f"fit_compute: bootstrap={bootstrap}; expected >= 0 resamples")
    A, y = compute_features(rows, cp)
    coef = _nnls_relative(A, y)
    pred = A @ coef
    out = {k: float(c) for k, c in zip(COMPUTE_TERMS, coef)}
    out["mape"] = float(np.mean(np.abs(pred - y) / y))
    Aw = A / y[:, None]
    norms = np.linalg.norm(Aw, axis=0)
    used = norms > 0                       # e.g. no sharded points when cp == 1
    out["condition_number"] = float(np.linalg.cond(Aw[:, used] / norms[used])) if used.any() else None
    rng = np.random.default_rng(seed)
    boots = np.array([_nnls_relative(A[i], y[i]) for i in (rng.integers(0, len(y), len(y)) for _ in range(bootstrap))])
    for j, k in enumerate(COMPUTE_TERMS):
        out[f"{k}_sd"] = float(boots[:, j].std(ddof=1)) if bootstrap > 1 else None  # JSON null
    out["n_points"] = int(len(y))
    out["bootstrap"] = int(bootstrap)
    return out


def fit_memory(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """α, β of Mem = α·tokens + β over the local-only points (bytes)."""
    pts = [(r["tokens_on_rank"], r["saved_bytes"]) for r in rows if r["kind"] == "local"]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        raise InputError(f"memory profile: {len(pts)} local points; expected at least two token counts")
    x, y = np.asarray(pts, dtype=float).T
    alpha, beta = np.polyfit(x, y, 1)
    return {"alpha_bytes_per_token": float(max(alpha, 1.0)), "beta_bytes": float(beta)}


def comm_worker(rank: int, world_size: int, sizes_bytes: Sequence[int], reps: int,
                seed: int = 0) -> dict[str, list[float]]:
    """Seconds of all-gather and reduce-scatter (float32) per total message size: the fastest of
    ``reps`` timed passes. As for the compute profile, the passes are interleaved: every pass times each
    (size, collective) once, in a seeded shuffled order that is the same on every rank (collectives
    must match), after one untimed warm-up of each; a slow spell of the shared machine then hits one
    pass of many points instead of every repetition of one size, and the minimum discards it."""
    import torch
    import torch.distributed as dist

    if reps < 1:
        raise InputError(f"comm benchmark: repeats={reps}; expected at least 1")
    points = []
    for nbytes in sizes_bytes:
        per_rank = max(1, int(nbytes) // 4 // world_size)
        small, big = torch.ones(per_rank), torch.ones(per_rank * world_size)
        points.append(("all_gather", lambda big=big, small=small: dist.all_gather_single(big, small)))
        points.append(("reduce_scatter", lambda big=big, small=small: dist.reduce_scatter_single(small, big)))
    for _, fn in points:                                      # warm-up
        fn()
    times: list[list[float]] = [[] for _ in points]
    rng = np.random.default_rng(seed)                         # same order on every rank
    for _ in range(reps):
        for i in rng.permutation(len(points)):
            dist.barrier()
            t0 = time.perf_counter()
            points[i][1]()
            times[i].append(time.perf_counter() - t0)
    out: dict[str, list[float]] = {"all_gather": [], "reduce_scatter": []}
    for (name, _), ts in zip(points, times):
        out[name].append(min(ts))
    return out


def comm_fit_report(sizes: Sequence[float], times: Mapping[str, Sequence[float]],
                    comm: Mapping[str, CommModel]) -> dict[str, Any]:
    """Eq. 16 fits with their relative error at every measured size (what fit.json records)."""
    out: dict[str, Any] = {}
    for name, model in comm.items():
        errors = model.relative_errors(sizes, times[name])
        out[name] = {"latency_s": model.latency_s, "base_s": model.base_s, "bandwidth_Bps": model.bandwidth_Bps,
                     "points": errors, "max_abs_rel_error": max(abs(e["rel_error"]) for e in errors)}
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
        all_gather=comm["all_gather"], reduce_scatter=comm["reduce_scatter"], kv_gathers=2,
        exposed_bwd_comm=True,
        notes="fitted from offline profiling on this machine (fp32, 1 thread per rank, gloo; K/V gathered "
              "again in the backward; the backward's collectives exposed)",
        meta={"fit_mape": float(compute.get("mape", 0.0)), "c_mb_compute": float(compute["c_mb"]),
              "c_mb_zero2_reduce": zero2, "grad_bytes": float(grad_bytes)})
