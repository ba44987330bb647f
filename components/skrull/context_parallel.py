"""DACP execution: one micro-batch of local and sharded sequences on the ranks of a CP group.

Each CP rank packs the tokens it owns into one row (no padding): first the **local** sequences it
keeps whole, then its zigzag chunks of every **sharded** sequence. Token-wise layers (embeddings,
MLP, norms, projections, LM head) run on the packed row as they are; only attention needs the
layout. For a local sequence attention is plain causal attention on this rank. For sharded
sequences the K/V of their shards are **all-gathered** over the CP group (the backward
reduce-scatters dK/dV), and each of the rank's query chunks attends to the keys before it — the
KV-all-gather flavour of context parallelism whose volume is linear in S·h_kv (Skrull Eq. 15).
The all-gather is started asynchronously and overlaps the local sequences' attention (Eq. 2).

:func:`dacp_attention` is registered as a ``transformers`` attention implementation, so the model
code is the stock Qwen2 decoder; the :class:`RankLayout` travels in the forward's ``dacp`` kwarg.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from components.base import InputError
from components.skrull.cost_model import SHARDED

IGNORE = -100


def zigzag_bounds(length: int, cp: int) -> list[tuple[int, int]]:
    """[start, end) of the 2N chunks of a sharded sequence (sizes as in ``shard_sizes``)."""
    base, extra = divmod(int(length), 2 * cp)
    bounds, start = [], 0
    for c in range(2 * cp):
        end = start + base + (1 if c < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def owned_chunks(rank: int, cp: int) -> tuple[int, int]:
    """Zigzag: CP rank r holds chunks r and 2N-1-r."""
    return rank, 2 * cp - 1 - rank


def next_token_labels(tokens: np.ndarray) -> np.ndarray:
    """Label of position p is token p+1 of the same sequence; the last position has none."""
    labels = np.full(len(tokens), IGNORE, dtype=np.int64)
    labels[:-1] = tokens[1:]
    return labels


# ---------------------------------------------------------------------------------------------------
# K/V exchange across the CP group
# ---------------------------------------------------------------------------------------------------
class _GatherKV(torch.autograd.Function):
    """Identity on the already gathered buffer in the forward; reduce-scatter of its gradient."""

    @staticmethod
    def forward(ctx, local_padded, gathered, exchange):
        ctx.exchange = exchange
        return gathered.view_as(gathered)

    @staticmethod
    def backward(ctx, grad):
        return ctx.exchange.reduce_scatter(grad.contiguous()), None, None


class DistExchange:
    """All-gather / reduce-scatter over a torch.distributed CP group (gloo on CPU)."""

    def __init__(self, group: Any, cp: int):
        self.group, self.cp = group, cp

    def start(self, kv_padded: torch.Tensor):
        import torch.distributed as dist

        buf = kv_padded.new_empty((self.cp * kv_padded.shape[0], kv_padded.shape[1]))
        work = dist.all_gather_single(buf, kv_padded.detach().contiguous(), group=self.group, async_op=True)
        return buf, work

    def finish(self, kv_padded: torch.Tensor, handle) -> torch.Tensor:
        buf, work = handle
        work.wait()
        return _GatherKV.apply(kv_padded, buf, self)

    def reduce_scatter(self, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = grad.new_empty((grad.shape[0] // self.cp, grad.shape[1]))
        dist.reduce_scatter_single(out, grad, group=self.group)
        return out


class LoopbackExchange:
    """One process stands in for rank r of a CP group (offline profiling): the other ranks' rows
    are copies of this rank's, so every tensor has the size it has in a real run, without peers."""

    def __init__(self, cp: int):
        self.cp = cp

    def start(self, kv_padded: torch.Tensor):
        return kv_padded.detach().repeat(self.cp, 1), None

    def finish(self, kv_padded: torch.Tensor, handle) -> torch.Tensor:
        return _GatherKV.apply(kv_padded, handle[0], self)

    def reduce_scatter(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.view(self.cp, -1, grad.shape[1]).sum(0)


# ---------------------------------------------------------------------------------------------------
# Per-rank layout of one micro-batch
# ---------------------------------------------------------------------------------------------------
@dataclass
class RankLayout:
    """What CP rank ``rank`` computes for one micro-batch (see the module docstring)."""

    rank: int
    cp: int
    input_ids: torch.Tensor                 # [1, T] packed tokens: local sequences, then shard chunks
    position_ids: torch.Tensor              # [1, T] position of each token inside its own sequence
    labels: torch.Tensor                    # [1, T] next-token labels (IGNORE at sequence ends)
    local_segments: list[tuple[int, int]]   # [start, end) of each local sequence in the packed row
    n_local: int                            # tokens of local sequences (the shard part follows)
    pad_rows: int = 0                       # rows every rank contributes to the all-gather
    gather_index: torch.Tensor | None = None  # rows of the gathered buffer in sequence-position order
    chunks: list[tuple[int, int, int, int, int]] = field(default_factory=list)  # (q0, qlen, a, b, off)
    exchange: Any = None
    _masks: dict[int, torch.Tensor] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def has_sharded(self) -> bool:
        return self.gather_index is not None

    def chunk_mask(self, i: int) -> torch.Tensor | None:
        """Causal mask of chunk i's queries [a, b) against keys [0, b) (None when a == 0)."""
        q0, qlen, a, b, _ = self.chunks[i]
        if a == 0:
            return None
        if i not in self._masks:
            self._masks[i] = torch.arange(b)[None, :] <= (a + torch.arange(qlen))[:, None]
        return self._masks[i]


def build_layout(seqs: Sequence[int], placement: Sequence[int], tokens: Sequence[np.ndarray], rank: int,
                 cp: int, exchange: Any = None) -> RankLayout:
    """Layout of CP rank ``rank`` for a micro-batch (``tokens[k]`` = token ids of sequence k)."""
    ids, pos, lab, segments = [], [], [], []
    n = 0
    sharded = [k for k, p in zip(seqs, placement) if p == SHARDED]
    for k, p in zip(seqs, placement):
        if p == rank:
            t = np.asarray(tokens[k], dtype=np.int64)
            ids.append(t)
            pos.append(np.arange(len(t)))
            lab.append(next_token_labels(t))
            segments.append((n, n + len(t)))
            n += len(t)
    n_local = n
    layout_kw: dict[str, Any] = {}
    if sharded:
        for k in sharded:
            if len(tokens[k]) < 2 * cp:
                raise InputError(f"sharded sequence {k}: {len(tokens[k])} tokens < 2·cp={2 * cp}; zigzag sharding "
                                 f"needs at least one token per chunk")
        rows_per_rank = [0] * cp
        row_of = {}   # (k, chunk) -> (owner rank, row offset in the owner's shard part)
        for k in sharded:
            bounds = zigzag_bounds(len(tokens[k]), cp)
            for r in range(cp):
                for c in owned_chunks(r, cp):
                    row_of[(k, c)] = (r, rows_per_rank[r])
                    rows_per_rank[r] += bounds[c][1] - bounds[c][0]
        pad = max(rows_per_rank)
        index, chunks, off = [], [], 0
        q0 = 0
        for k in sharded:
            t = np.asarray(tokens[k], dtype=np.int64)
            labels = next_token_labels(t)
            bounds = zigzag_bounds(len(t), cp)
            for c, (a, b) in enumerate(bounds):
                owner, row = row_of[(k, c)]
                index.append(owner * pad + row + np.arange(b - a))
            for c in owned_chunks(rank, cp):
                a, b = bounds[c]
                ids.append(t[a:b])
                pos.append(np.arange(a, b))
                lab.append(labels[a:b])
                chunks.append((q0, b - a, a, b, off))
                q0 += b - a
            off += len(t)
        layout_kw = {"pad_rows": pad, "gather_index": torch.from_numpy(np.concatenate(index)), "chunks": chunks}
    cat = (lambda xs: torch.from_numpy(np.concatenate(xs))[None]) if ids else (lambda xs: torch.zeros((1, 0), dtype=torch.long))
    return RankLayout(rank=rank, cp=cp, input_ids=cat(ids), position_ids=cat(pos), labels=cat(lab),
                      local_segments=segments, n_local=n_local, exchange=exchange, **layout_kw)


# ---------------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------------
def dacp_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0,
                   dacp: RankLayout | None = None, **kwargs):
    """DACP attention (a ``transformers`` attention implementation). Shapes: query [1, H, T, d],
    key/value [1, KV, T, d]; returns ([1, T, H, d], None)."""
    if dacp is None:
        raise InputError("DACP attention called without a layout: pass dacp=RankLayout(...) to the model forward")
    lay = dacp
    q, k, v = query[0], key[0], value[0]
    kv_heads, d = k.shape[0], k.shape[2]
    outs = []
    if lay.has_sharded:   # start the K/V all-gather of the shard part; it overlaps local attention
        kv = torch.cat([k[:, lay.n_local:], v[:, lay.n_local:]], dim=0).transpose(0, 1).reshape(-1, 2 * kv_heads * d)
        kv = F.pad(kv, (0, 0, 0, lay.pad_rows - kv.shape[0]))
        handle = lay.exchange.start(kv)
    for s, e in lay.local_segments:
        outs.append(F.scaled_dot_product_attention(q[None, :, s:e], k[None, :, s:e], v[None, :, s:e],
                                                   is_causal=True, scale=scaling, enable_gqa=True)[0])
    if lay.has_sharded:
        full = lay.exchange.finish(kv, handle).index_select(0, lay.gather_index)
        full = full.view(-1, 2 * kv_heads, d).transpose(0, 1)          # [2KV, ΣS, d] in position order
        kf, vf = full[:kv_heads], full[kv_heads:]
        for i, (q0, qlen, a, b, off) in enumerate(lay.chunks):
            qq = q[None, :, lay.n_local + q0: lay.n_local + q0 + qlen]
            mask = lay.chunk_mask(i)
            outs.append(F.scaled_dot_product_attention(qq, kf[None, :, off:off + b], vf[None, :, off:off + b],
                                                       attn_mask=mask, is_causal=mask is None, scale=scaling,
                                                       enable_gqa=True)[0])
    out = torch.cat(outs, dim=1) if outs else q[:, :0]
    return out.transpose(0, 1)[None].contiguous(), None


_REGISTERED: set[str] = set()


def register_dacp_attention(name: str) -> None:
    if name in _REGISTERED:
        return
    from transformers import AttentionInterface

    AttentionInterface.register(name, dacp_attention)
    _REGISTERED.add(name)


def microbatch_loss(model, layout: RankLayout) -> torch.Tensor:
    """Summed next-token cross-entropy of this rank's tokens for one micro-batch (a 0-d tensor)."""
    out = model(input_ids=layout.input_ids, position_ids=layout.position_ids,
                attention_mask={"full_attention": None}, dacp=layout, use_cache=False)
    logits = out.logits[0]
    return F.cross_entropy(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits,
                           layout.labels[0], ignore_index=IGNORE, reduction="sum")
