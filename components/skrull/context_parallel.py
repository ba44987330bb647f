"""DACP execution: one micro-batch of local and sharded sequences on the ranks of a CP group.

Each CP rank packs the tokens it owns into one row (no padding): first the **local** sequences it
keeps whole, then its zigzag chunks of every **sharded** sequence. Token-wise layers (embeddings,
MLP, norms, projections, LM head) run on the packed row as they are; only attention needs the
layout. For a local sequence attention is plain causal attention on this rank. For sharded
sequences the K/V of their shards are **all-gathered** over the CP group and each of the rank's
query chunks attends to the keys before it — the KV-all-gather flavour of context parallelism
(llama3-style) whose volume is linear in S·h_kv (Skrull Eq. 15). The all-gather is started
asynchronously and overlaps the local sequences' attention (Eq. 2).

Activation memory stays linear in the tokens a rank holds, as Skrull's memory model (``Mem = α·S
+ β`` over a rank's tokens, sharded ones counted S/N) assumes: :class:`_ShardedAttention` saves only
this rank's queries, its own K/V rows, the output and the log-sum-exp. The gathered K/V is dropped
after the forward and **all-gathered again in the backward** (as llama3-style all-gather CP does),
which then reduce-scatters dK/dV; the cost model prices both gathers (``CostModel.kv_gathers = 2``).
A query chunk at positions [a, b) attends to the keys [0, a) without a mask and to [a, b) causally
(two flash-attention calls merged by their log-sum-exp), so no (queries × keys) mask is built — an
explicit mask is materialised as floats per layer and saved, which made a sharded rank's saved
activations quadratic in the sequence length (measured: 1.46× a local rank's bytes per token at
S = 2·819, cp = 2, before this design).

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
# K/V exchange across the CP group (no autograd here: :class:`_ShardedAttention` calls it)
# ---------------------------------------------------------------------------------------------------
class _Exchange:
    """``start`` an all-gather of this rank's K/V rows, ``wait`` for the gathered buffer; ``gather`` does
    both (the backward's second gather, which has nothing to overlap with)."""

    def gather(self, kv_padded: torch.Tensor) -> torch.Tensor:
        return self.wait(self.start(kv_padded))


class DistExchange(_Exchange):
    """All-gather / reduce-scatter over a torch.distributed CP group (gloo on CPU)."""

    def __init__(self, group: Any, cp: int):
        self.group, self.cp = group, cp

    def start(self, kv_padded: torch.Tensor):
        """Start the all-gather of this rank's K/V rows; :meth:`wait` returns the gathered buffer."""
        import torch.distributed as dist

        buf = kv_padded.new_empty((self.cp * kv_padded.shape[0], kv_padded.shape[1]))
        work = dist.all_gather_single(buf, kv_padded.detach().contiguous(), group=self.group, async_op=True)
        return buf, work

    def wait(self, handle) -> torch.Tensor:
        buf, work = handle
        work.wait()
        return buf

    def reduce_scatter(self, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = grad.new_empty((grad.shape[0] // self.cp, grad.shape[1]))
        dist.reduce_scatter_single(out, grad.contiguous(), group=self.group)
        return out


class LoopbackExchange(_Exchange):
    """One process stands in for rank r of a CP group (offline profiling): the other ranks' rows
    are copies of this rank's, so every tensor has the size it has in a real run, without peers."""

    def __init__(self, cp: int):
        self.cp = cp

    def start(self, kv_padded: torch.Tensor):
        return kv_padded.detach().repeat(self.cp, 1)

    def wait(self, handle) -> torch.Tensor:
        return handle

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

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def has_sharded(self) -> bool:
        return self.gather_index is not None


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
def _flash(q, k, v, causal: bool, scale):
    """PyTorch's CPU flash attention: (output, log-sum-exp); q [1, H, L, d], k/v [1, KV, S, d] (GQA)."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)


def _flash_backward(grad, q, k, v, out, lse, causal: bool, scale):
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        grad, q, k, v, out, lse, 0.0, causal, scale=scale)


def _kv_rows(k_shard: torch.Tensor, v_shard: torch.Tensor, pad_rows: int) -> torch.Tensor:
    """This rank's rows of the all-gather: [pad_rows, 2·KV·d], K then V of each of its shard tokens
    (zero rows up to ``pad_rows``, the most shard tokens any rank of the group holds)."""
    kv = torch.cat([k_shard, v_shard], dim=0).transpose(0, 1).reshape(k_shard.shape[1], -1)
    return F.pad(kv, (0, 0, 0, pad_rows - kv.shape[0]))


def _gathered_kv(lay: RankLayout, buf: torch.Tensor, kv_heads: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V [1, KV, ΣS, d] of every sharded sequence, in position order, from the gathered rows."""
    full = buf.index_select(0, lay.gather_index).view(-1, 2 * kv_heads, d).transpose(0, 1)[None]
    return full[:, :kv_heads], full[:, kv_heads:]


def _key_blocks(a: int, b: int, off: int):
    """The key blocks of a query chunk at positions [a, b) of a sequence starting at row ``off``:
    the diagonal block [a, b) (causal; square, so top-left causal alignment is the right one) and,
    when a > 0, the prefix [0, a) that every query of the chunk sees whole."""
    blocks = [(slice(off + a, off + b), True)]
    if a > 0:
        blocks.append((slice(off, off + a), False))
    return blocks


class _ShardedAttention(torch.autograd.Function):
    """Attention of this rank's query chunks of the sharded sequences over the gathered K/V.

    Saves this rank's queries and K/V (views of the projections' outputs, which the local
    sequences' attention saves too), the output and the log-sum-exp — all linear in the rank's
    tokens; the backward all-gathers the K/V again and reduce-scatters dK/dV to their owners.
    Each block's backward uses the merged output and log-sum-exp (as ring/flash attention do), so
    the per-block gradients sum to the exact gradient."""

    @staticmethod
    def forward(ctx, q_shard, k_shard, v_shard, lay: RankLayout, handle, scale):
        # q_shard [H, Tq, d]; k_shard, v_shard [KV, Tq, d]: this rank's rows of the sharded sequences
        if q_shard.device.type != "cpu":
            raise InputError(f"DACP sharded attention: tensors on {q_shard.device}; this implementation uses "
                             f"PyTorch's CPU flash-attention kernels and runs on CPU only")
        kv_heads, d = k_shard.shape[0], k_shard.shape[2]
        acc = torch.promote_types(q_shard.dtype, torch.float32)    # merge in >= fp32, cast once
        kf, vf = _gathered_kv(lay, lay.exchange.wait(handle), kv_heads, d)
        outs, lses = [], []
        for q0, qlen, a, b, off in lay.chunks:
            qq = q_shard[None, :, q0:q0 + qlen]
            out = lse = None
            for rows, causal in _key_blocks(a, b, off):
                o, s = _flash(qq, kf[:, :, rows], vf[:, :, rows], causal, scale)
                o, s = o.to(acc), s.to(acc)
                if out is None:
                    out, lse = o, s
                else:
                    merged = torch.logaddexp(lse, s)
                    out = out * torch.exp(lse - merged)[..., None] + o * torch.exp(s - merged)[..., None]
                    lse = merged
            outs.append(out[0].to(q_shard.dtype))
            lses.append(lse[0])
        out, lse = torch.cat(outs, dim=1), torch.cat(lses, dim=1)
        ctx.save_for_backward(q_shard, k_shard, v_shard, out, lse)
        ctx.lay, ctx.scale = lay, scale
        return out

    @staticmethod
    def backward(ctx, grad):
        q_shard, k_shard, v_shard, out, lse = ctx.saved_tensors
        lay, scale = ctx.lay, ctx.scale
        kv_heads, d = k_shard.shape[0], k_shard.shape[2]
        kf, vf = _gathered_kv(lay, lay.exchange.gather(_kv_rows(k_shard, v_shard, lay.pad_rows)), kv_heads, d)
        acc = lse.dtype                         # >= fp32 (the kernel's log-sum-exp): the blocks' partials add up in it
        dq = torch.zeros(q_shard.shape, dtype=acc)
        dfull = torch.zeros((1, 2 * kv_heads, kf.shape[2], d), dtype=acc)
        dk, dv = dfull[:, :kv_heads], dfull[:, kv_heads:]
        for q0, qlen, a, b, off in lay.chunks:
            rows_q = slice(q0, q0 + qlen)
            qq, g = q_shard[None, :, rows_q], grad[None, :, rows_q].contiguous()
            o, s = out[None, :, rows_q], lse[None, :, rows_q]
            for rows, causal in _key_blocks(a, b, off):
                gq, gk, gv = _flash_backward(g, qq, kf[:, :, rows], vf[:, :, rows], o, s, causal, scale)
                dq[:, rows_q] += gq[0]
                dk[:, :, rows] += gk
                dv[:, :, rows] += gv
        drows = dfull[0].transpose(0, 1).reshape(-1, 2 * kv_heads * d)             # [ΣS, 2·KV·d]
        dbuf = drows.new_zeros((lay.cp * lay.pad_rows, drows.shape[1])).index_add_(0, lay.gather_index, drows)
        dbuf = dbuf.to(k_shard.dtype)           # reduce-scattered in the K/V dtype: the volume the cost model prices
        dkv = lay.exchange.reduce_scatter(dbuf)[:k_shard.shape[1]].view(-1, 2 * kv_heads, d).transpose(0, 1)
        return dq.to(q_shard.dtype), dkv[:kv_heads], dkv[kv_heads:], None, None, None


def dacp_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0,
                   dacp: RankLayout | None = None, **kwargs):
    """DACP attention (a ``transformers`` attention implementation). Shapes: query [1, H, T, d],
    key/value [1, KV, T, d]; returns ([1, T, H, d], None)."""
    if dacp is None:
        raise InputError("DACP attention called without a layout: pass dacp=RankLayout(...) to the model forward")
    lay = dacp
    q, k, v = query[0], key[0], value[0]
    outs = []
    if lay.has_sharded:   # start the K/V all-gather of the shard part; it overlaps local attention
        handle = lay.exchange.start(_kv_rows(k[:, lay.n_local:].detach(), v[:, lay.n_local:].detach(), lay.pad_rows))
    for s, e in lay.local_segments:
        outs.append(F.scaled_dot_product_attention(q[None, :, s:e], k[None, :, s:e], v[None, :, s:e],
                                                   is_causal=True, scale=scaling, enable_gqa=True)[0])
    if lay.has_sharded:
        outs.append(_ShardedAttention.apply(q[:, lay.n_local:], k[:, lay.n_local:], v[:, lay.n_local:], lay,
                                            handle, scaling))
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
