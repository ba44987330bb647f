"""Skrull's performance model (paper App. C): compute, activation memory and communication.

All times are one training iteration's forward + backward, in seconds, per rank.

* **Compute** [V text, R form]: ``T_comp(S) = c_seq + c_tok·S + c_quad·S²`` — the linear and
  quadratic terms of the per-layer FLOPs ``(20h² + 4h·h_kv)·S + 4h·S²`` (Eq. 13 as quoted in the
  notes [S]) times a seconds-per-FLOP constant, plus a per-sequence constant (β_c).
  A sequence sharded over the N ranks of a CP group costs every rank
  ``T_comp(S, N) = c_seq_shard + (c_tok·S + c_quad·S²)/N`` (zigzag chunks balance the causal work).
* **Memory** [V]: activation memory is linear in the tokens a rank holds, ``Mem = α·S + β``;
  the **BucketSize** ``C`` is the number of tokens that fit the activation budget.
* **Communication** [V text, R form]: a sharded sequence's K and V are all-gathered in the forward
  and their gradients reduce-scattered in the backward, per layer; the volume is linear in S and
  h_kv (Eq. 15). ``kv_gathers`` = 2 where the backward all-gathers the K/V again instead of keeping
  the gathered K/V saved (this repo's CP implementation, which keeps activation memory linear in a
  rank's own tokens — the memory model above; :mod:`components.skrull.context_parallel`) [R]. One collective costs ``max(latency, base + bytes/bandwidth)`` — a fixed latency
  below a size threshold, linear above it (Eq. 16).
* **Micro-batch time** (Eqs. 1–2): ``Time_j = max(T_comm(V), T_comp(Local_j)) + T_comp(Dist) + c_mb``
  on CP rank j — communication of the sharded sequences overlaps the local sequences' compute. As in
  the paper, the presets count all of T_comm as overlappable. ``exposed_bwd_comm`` [R] prices this
  repo's CP implementation instead: only the forward all-gather is started before the local attention;
  the backward's second all-gather and its reduce-scatter block (nothing is queued to overlap them), so
  ``Time_j = max(T_ag(V), T_comp(Local_j)) + T_bwd(V) + T_comp(Dist) + c_mb`` with
  ``T_ag = layers·AG`` and ``T_bwd = layers·((kv_gathers − 1)·AG + RS)`` (:meth:`CostModel.comm_split`).
  The profiled CPU model sets it; before it did, that model over-credited the overlap by up to
  ``T_bwd`` (about 3 ms per micro-batch for 4 layers on gloo here). One approximation remains [R]:
  ``max(T_ag, T_comp(Local_j))`` lets the forward all-gathers hide under the rank's *whole* local
  compute, while the code overlaps each layer's gather with that layer's local forward attention
  only; the over-credit is at most ``T_ag`` and only matters when the local sequences are short.

Two calibrations: :func:`paper_preset` (H100, Qwen2.5 constants from the notes) and a CPU model
fitted from offline profiling on this machine (:mod:`components.skrull.profiling`).
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np

from components.base import ConfigError, InputError

#: placement code of a sequence sharded across the CP group (else: the CP rank holding it whole)
SHARDED = -1


@functools.lru_cache(maxsize=65536)
def _shard_sizes(length: int, cp: int) -> tuple[int, ...]:
    base, extra = divmod(length, 2 * cp)
    chunk = [base + (1 if c < extra else 0) for c in range(2 * cp)]
    return tuple(chunk[r] + chunk[2 * cp - 1 - r] for r in range(cp))


def shard_sizes(length: int, cp: int) -> tuple[int, ...]:
    """Tokens each CP rank holds of a sharded sequence: zigzag split into 2N chunks, rank r takes
    chunks r and 2N-1-r (causal load balance, as in Megatron/llama3 context parallelism)."""
    return _shard_sizes(int(length), int(cp))


@dataclass(frozen=True)
class CommModel:
    """Time of one collective of ``nbytes`` (Eq. 16 [R form])."""

    latency_s: float
    base_s: float = 0.0
    bandwidth_Bps: float = float("inf")

    def time(self, nbytes: float) -> float:
        if nbytes <= 0:
            return 0.0
        return max(self.latency_s, self.base_s + nbytes / self.bandwidth_Bps)

    @classmethod
    def fit(cls, sizes: Sequence[float], times: Sequence[float]) -> "CommModel":
        """Fit to a micro-benchmark: latency = the median time of the smallest third of the sizes; the
        linear regime by least squares on the larger half (where its slope is not positive, the line
        through the origin and the latency at the largest size: every measured size costs the latency).

        The regression's intercept ``base`` is clamped into ``[0, latency]``: above the measured
        small-message latency the floor ``max(latency, base + bytes/bw)`` would never bind and the
        model would over-predict every small message (the line's intercept is an extrapolation from
        the large sizes, the latency a measurement). When clamped, the slope is refitted through the
        clamped intercept, so the large sizes stay fitted by least squares."""
        sizes, times = np.asarray(sizes, float), np.asarray(times, float)
        if (sizes.ndim != 1 or len(sizes) < 3 or sizes.shape != times.shape or not np.all(np.isfinite(sizes))
                or not np.all(np.isfinite(times)) or np.any(sizes <= 0) or np.any(times <= 0)):
            raise InputError(f"comm benchmark: expected >= 3 positive (size, time) points, got sizes={sizes.tolist()} "
                             f"times={times.tolist()}")
        order = np.argsort(sizes)
        sizes, times = sizes[order], times[order]
        latency = float(np.median(times[: max(1, len(sizes) // 3)]))
        big = slice(len(sizes) // 2, None)
        xs, ys = sizes[big], times[big]
        slope, base = (float(v) for v in np.polyfit(xs, ys, 1))
        if not 0.0 <= base <= latency:
            base = min(max(base, 0.0), latency)
            slope = float(np.dot(xs, ys - base) / np.dot(xs, xs))     # least squares through (0, base)
        if not slope > 0:
            # no bandwidth term visible in the measured range (all latency-bound, or noise): the line
            # from the origin that reaches the latency floor at the largest measured size
            base = 0.0
            slope = latency / float(sizes[-1])
        return cls(latency_s=latency, base_s=base, bandwidth_Bps=1.0 / slope)

    def relative_errors(self, sizes: Sequence[float], times: Sequence[float]) -> list[dict[str, float]]:
        """Per measured size: the measured and the modelled time and (model - measured) / measured."""
        return [{"bytes": float(s), "measured_s": float(t), "model_s": self.time(s),
                 "rel_error": (self.time(s) - float(t)) / float(t)} for s, t in zip(sizes, times)]


@dataclass(frozen=True)
class CostModel:
    """Per-rank time/memory model of one CP group (see the module docstring)."""

    name: str
    layers: int
    kv_bytes_per_token: float          # K and V of one token in one layer (Eq. 15)
    c_tok: float                       # s per token (fwd+bwd), linear term
    c_quad: float                      # s per token², attention term (full S² as in Eq. 13)
    mem_bytes_per_token: float         # α of Mem(S) = α·S + β
    mem_budget_bytes: float            # activation memory available per rank
    all_gather: CommModel
    reduce_scatter: CommModel
    c_seq: float = 0.0                 # s per whole (local) sequence: attention call overhead (β_c)
    c_seq_shard: float = 0.0           # s per sharded sequence per rank (its zigzag chunk calls)
    c_mb: float = 0.0                  # s per micro-batch per rank (framework overhead)
    overlap: bool = True               # Eq. 2: comm of sharded sequences overlaps local compute
    kv_gathers: int = 1                # K/V all-gathers per layer per step: 2 = gathered again in the backward
    exposed_bwd_comm: bool = False     # the backward's collectives block: only the forward all-gather overlaps
    notes: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    # -- derived -------------------------------------------------------------------------------
    @property
    def bucket_size(self) -> int:
        """BucketSize C: tokens one rank can hold within the activation budget."""
        return int(self.mem_budget_bytes // self.mem_bytes_per_token)

    def flops_time(self, length: float) -> float:
        """Compute-time weight of a sequence (the "FLOPs" GDS balances): T_comp(S) without β."""
        return self.c_tok * length + self.c_quad * length * length

    def t_comp(self, length: float) -> float:
        """T_comp(S): one rank processes the whole sequence."""
        return self.c_seq + self.flops_time(length)

    def t_comp_shard(self, length: float, cp: int) -> float:
        """T_comp(S, N): what a sharded sequence costs each of the N ranks."""
        return self.c_seq_shard + self.flops_time(length) / cp

    def volume(self, length: float) -> float:
        """Bytes one layer exchanges for a sharded sequence (Eq. 15)."""
        return length * self.kv_bytes_per_token

    def t_comm(self, volume: float) -> float:
        """T_comm(V): every layer all-gathers K/V (forward; again in the backward when ``kv_gathers``
        is 2) and reduce-scatters dK/dV (backward)."""
        if volume <= 0:
            return 0.0
        return self.layers * (self.kv_gathers * self.all_gather.time(volume) + self.reduce_scatter.time(volume))

    def comm_split(self, volume: float) -> tuple[float, float]:
        """T_comm(V) as (the part that may hide under the local compute, the part that is always
        exposed): ``(T_comm, 0)`` as in the paper's Eq. 2; with ``exposed_bwd_comm`` the forward
        all-gathers may hide and the backward's gathers and reduce-scatters are exposed; without
        ``overlap`` nothing hides."""
        if volume <= 0:
            return 0.0, 0.0
        if not self.overlap:
            return 0.0, self.t_comm(volume)
        if not self.exposed_bwd_comm:
            return self.t_comm(volume), 0.0
        ag = self.all_gather.time(volume)
        return self.layers * ag, self.layers * ((self.kv_gathers - 1) * ag + self.reduce_scatter.time(volume))

    def rank_times(self, lengths: Sequence[int], placement: Sequence[int], cp: int) -> list[float]:
        """Time_j of every CP rank for one micro-batch (Eqs. 1–5)."""
        local = [0.0] * cp
        dist, volume = 0.0, 0.0
        for s, p in zip(lengths, placement):
            if p == SHARDED:
                dist += self.t_comp_shard(s, cp)
                volume += self.volume(s)
            else:
                local[p] += self.t_comp(s)
        hidden, exposed = self.comm_split(volume)
        return [self.c_mb + self.rank_time(loc, hidden, dist, exposed) for loc in local]

    def rank_time(self, local: float, comm: float, dist: float, exposed: float = 0.0) -> float:
        """Eq. 2 for one rank (without ``c_mb``): its local sequences' compute, the sharded sequences'
        communication that may overlap it (``comm``) and that may not (``exposed``; both from
        :meth:`comm_split`), and their compute ``dist``."""
        return max(comm, local) + exposed + dist

    def microbatch_time(self, lengths: Sequence[int], placement: Sequence[int], cp: int) -> float:
        """T_DACP (Eq. 1): the slowest CP rank."""
        return max(self.rank_times(lengths, placement, cp)) if len(lengths) else 0.0

    # -- (de)serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bucket_size"] = self.bucket_size
        return d

    #: numeric fields of a record and their lower bound: ``(">=", 0)`` for costs, ``(">", 0)`` where
    #: zero is meaningless (a divisor, a count)
    _NUMERIC = {"layers": (">", 0), "kv_bytes_per_token": (">=", 0), "c_tok": (">=", 0), "c_quad": (">=", 0),
                "mem_bytes_per_token": (">", 0), "mem_budget_bytes": (">", 0), "c_seq": (">=", 0),
                "c_seq_shard": (">=", 0), "c_mb": (">=", 0), "kv_gathers": (">", 0)}
    _COMM_NUMERIC = {"latency_s": (">=", 0), "base_s": (">=", 0), "bandwidth_Bps": (">", 0)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str | None = None) -> "CostModel":
        """The model of a :meth:`to_dict` record. Every numeric field must be a finite number, >= 0 for
        the costs and > 0 for ``layers`` and ``kv_gathers`` (integers), ``mem_bytes_per_token``, ``mem_budget_bytes``
        and the collectives' ``bandwidth_Bps``; otherwise :class:`InputError` names the field, the
        value and ``source`` (the file the record came from, when given)."""
        where = f"cost model {source}" if source else "cost model"
        if not isinstance(d, Mapping):
            raise InputError(f"{where}: a {type(d).__name__} record; expected a mapping of the fields of CostModel")
        d = dict(d)
        d.pop("bucket_size", None)
        try:
            for kind in ("all_gather", "reduce_scatter"):
                if not isinstance(d[kind], Mapping):
                    raise TypeError(f"{kind}={d[kind]!r} is not a mapping")
                for key, bound in cls._COMM_NUMERIC.items():
                    if key in d[kind]:
                        _check_number(where, f"{kind}.{key}", d[kind][key], bound)
                d[kind] = CommModel(**d[kind])
            for key, bound in cls._NUMERIC.items():
                if key in d:
                    _check_number(where, key, d[key], bound, integer=key in ("layers", "kv_gathers"))
                    if key in ("layers", "kv_gathers"):
                        d[key] = int(d[key])             # 2.0 in a record is the integer 2
            for key in ("overlap", "exposed_bwd_comm"):
                if key in d and not isinstance(d[key], bool):
                    raise InputError(f"{where}: {key}={d[key]!r}; expected true or false")
            model = cls(**d)
        except (KeyError, TypeError) as err:
            raise InputError(f"{where}: malformed record ({err}); expected the fields of CostModel") from None
        if model.bucket_size < 1:
            raise InputError(f"{where} {model.name}: bucket size {model.bucket_size} tokens; expected >= 1 "
                             f"(mem_budget_bytes={model.mem_budget_bytes}, mem_bytes_per_token={model.mem_bytes_per_token})")
        return model

    def with_bucket(self, tokens: int) -> "CostModel":
        """The same model with the activation budget set to ``tokens`` tokens per rank: the budget is
        ``tokens × α``, raised by the few ulps that make :attr:`bucket_size` exactly ``tokens`` (the
        rounded product divided by α often floors to ``tokens - 1``)."""
        alpha = self.mem_bytes_per_token
        budget = float(tokens) * alpha
        while budget // alpha < tokens:
            budget = math.nextafter(budget, math.inf)
        return replace(self, mem_budget_bytes=budget)


def _check_number(where: str, key: str, value: Any, bound: tuple[str, float], integer: bool = False) -> None:
    """Raise :class:`InputError` unless ``value`` is a finite number (an integer if ``integer``) within ``bound``."""
    op, limit = bound
    expected = f"a finite {'integer' if integer else 'number'} {op} {limit:g}"
    ok = (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
          and math.isfinite(value) and (value > limit if op == ">" else value >= limit)
          and (not integer or float(value).is_integer()))
    if not ok:
        raise InputError(f"{where}: {key}={value!r}; expected {expected}")


# ---------------------------------------------------------------------------------------------------
# Paper-scale presets: H100 + Qwen2.5 (constants from the notes; [R] where marked)
# ---------------------------------------------------------------------------------------------------

#: Qwen2.5 architecture constants (public model configs): hidden, KV hidden (kv_heads × head_dim), layers;
#: BucketSize C on H100 as reported by Skrull [V].
QWEN25 = {
    "qwen2.5-0.5b": {"hidden": 896, "kv_hidden": 2 * 64, "layers": 24, "bucket_tokens": 26 * 1024},
    "qwen2.5-7b": {"hidden": 3584, "kv_hidden": 4 * 128, "layers": 28, "bucket_tokens": 13 * 1024},
}

#: Skrull Table 5 [V] (H100, microseconds): message size (bytes) -> time
TABLE5_US = {
    "all_gather": {2 * 2**20: 53.0, 512 * 2**20: 3416.0, 2**30: 6468.0},
    "reduce_scatter": {2 * 2**20: 59.0, 512 * 2**20: 3240.0, 2**30: 6294.0},
}


def table5_comm(kind: str) -> CommModel:
    """Eq. 16 fitted to Table 5: latency = the 2 MB time; bandwidth through the origin from 1 GB
    (reproduces the 512 MB entry within 6 %)."""
    pts = TABLE5_US[kind]
    big = max(pts)
    return CommModel(latency_s=pts[min(pts)] * 1e-6, base_s=0.0, bandwidth_Bps=big / (pts[big] * 1e-6))


def paper_preset(model: str, *, achieved_tflops: float = 400.0, bytes_per_value: int = 2,
                 fwd_bwd_linear: float = 3.0, fwd_bwd_attention: float = 4.0,
                 c_seq_s: float = 0.0, c_seq_shard_s: float = 0.0, c_mb_s: float = 0.0) -> CostModel:
    """Cost model of one Qwen2.5 CP group on H100 (paper scale).

    [R] ``achieved_tflops`` (H100 bf16 peak 989 TFLOP/s at ~40 % MFU), backward = 2× forward for the
    linear term and 3× for attention (selective recomputation re-runs attention), bf16 K/V. The
    per-sequence and per-micro-batch constants default to 0 (Skrull's model has only α, β).
    """
    if model not in QWEN25:
        raise ConfigError(f"paper model {model!r}: expected one of {sorted(QWEN25)}")
    if achieved_tflops <= 0:
        raise ConfigError(f"achieved_tflops={achieved_tflops}: expected > 0")
    q = QWEN25[model]
    h, hkv, layers = q["hidden"], q["kv_hidden"], q["layers"]
    s_per_flop = 1.0 / (achieved_tflops * 1e12)
    # Eq. 13 (per layer, forward): (20h² + 4h·h_kv)·S + 4h·S²
    c_tok = layers * (20 * h * h + 4 * h * hkv) * fwd_bwd_linear * s_per_flop
    c_quad = layers * 4 * h * fwd_bwd_attention * s_per_flop
    mem_per_token = 1.0  # C is given directly: budget in "tokens"
    return CostModel(
        name=f"{model}@H100", layers=layers, kv_bytes_per_token=2 * hkv * bytes_per_value,
        c_tok=c_tok, c_quad=c_quad, mem_bytes_per_token=mem_per_token,
        mem_budget_bytes=float(q["bucket_tokens"]) * mem_per_token,
        all_gather=table5_comm("all_gather"), reduce_scatter=table5_comm("reduce_scatter"),
        c_seq=c_seq_s, c_seq_shard=c_seq_shard_s, c_mb=c_mb_s,
        notes=f"paper preset: {model} on H100 at {achieved_tflops:g} TFLOP/s achieved [R], "
              f"C={q['bucket_tokens']} tokens [V], Table 5 collectives [V]",
        meta={"hidden": h, "kv_hidden": hkv, "achieved_tflops": achieved_tflops})


def quadratic_crossover(cost: CostModel) -> float:
    """Sequence length where the attention (S²) term equals the linear term."""
    return cost.c_tok / cost.c_quad if cost.c_quad > 0 else math.inf
