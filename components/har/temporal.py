"""The online temporal head: a small LSTR (Long Short-Term Transformer, Xu et al., NeurIPS 2021).

Per step (one chunk = 6 frames) the head sees the features of the last ``long_memory +
short_window`` chunks. As in LSTR,

- the **long memory** (older chunks) is compressed by ``latent_queries`` learned queries that
  cross-attend to it (LSTR's first-stage memory encoder; one stage here instead of two), and
- the **short window** (the newest chunks, LSTR's work memory) runs a causal decoder that
  self-attends within the window and cross-attends to the compressed long memory;

the last short token's class scores are the prediction of the step. Two-stream input (RGB +
motion) is concatenated per chunk before the input projection (LSTR's ``twostream`` modality): the
late fusion of the two streams. An always-present learned "empty memory" token lets the first steps
of a stream, whose long memory is empty, attend to something.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from components.har.config import TemporalConfig


class LstrHead(nn.Module):
    def __init__(self, in_dim: int, num_classes: int, cfg: TemporalConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.long_memory, self.short_window = cfg.long_memory, cfg.short_window
        self.window = cfg.long_memory + cfg.short_window
        self.proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, d), nn.Dropout(cfg.dropout))
        self.pos = nn.Parameter(torch.randn(self.window, d) * 0.02)
        self.latent = nn.Parameter(torch.randn(cfg.latent_queries, d) * 0.02)
        self.empty = nn.Parameter(torch.zeros(1, 1, d))
        layer = dict(d_model=d, nhead=cfg.heads, dim_feedforward=2 * d, dropout=cfg.dropout, batch_first=True)
        self.memory_encoder = nn.TransformerDecoderLayer(**layer)
        self.short_decoder = nn.TransformerDecoderLayer(**layer)
        self.norm = nn.LayerNorm(d)
        self.cls = nn.Linear(d, num_classes)
        causal = torch.triu(torch.ones(cfg.short_window, cfg.short_window, dtype=torch.bool), 1)
        self.register_buffer("causal", causal, persistent=False)

    def forward(self, feats: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """feats (B, window, in_dim) oldest first, zero-padded on the left; valid (B, window) bool.
        Returns logits (B, short_window, classes) for every short-window token."""
        B = feats.shape[0]
        x = self.proj(feats) + self.pos
        long_x, short_x = x[:, : self.long_memory], x[:, self.long_memory:]
        long_valid, short_valid = valid[:, : self.long_memory], valid[:, self.long_memory:]
        empty = self.empty.expand(B, 1, -1)
        mem_keys = torch.cat([empty, long_x], 1)
        mem_pad = torch.cat([torch.zeros(B, 1, dtype=torch.bool, device=feats.device), ~long_valid], 1)
        memory = self.memory_encoder(self.latent.expand(B, -1, -1), mem_keys, memory_key_padding_mask=mem_pad)
        # short tokens: causal self-attention; padded (not yet seen) tokens are never attended to
        # except by themselves, and their outputs are ignored
        pad = ~short_valid
        self_mask = self.causal[None].expand(B, -1, -1) | pad[:, None, :]
        self_mask = self_mask & ~torch.eye(self.short_window, dtype=torch.bool, device=feats.device)[None]
        self_mask = self_mask.repeat_interleave(self.short_decoder.self_attn.num_heads, 0)
        out = self.short_decoder(short_x, memory, tgt_mask=self_mask)
        return self.cls(self.norm(out))


def windows(seq: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """All causal windows of one clip's chunk features (T, D): (T, window, D) and valid (T, window).
    Window t ends at chunk t (oldest first, zero-padded on the left)."""
    T, D = seq.shape
    out = np.zeros((T, window, D), np.float32)
    valid = np.zeros((T, window), bool)
    for t in range(T):
        lo = max(0, t - window + 1)
        n = t + 1 - lo
        out[t, window - n:] = seq[lo:t + 1]
        valid[t, window - n:] = True
    return out, valid


def clip_windows(features: list[np.ndarray], labels: list[int], window: int):
    """Stack the windows of many clips: X (M, window, D), valid (M, window), y (M,), step (M,)."""
    xs, vs, ys, steps = [], [], [], []
    for f, y in zip(features, labels):
        w, v = windows(f, window)
        xs.append(w)
        vs.append(v)
        ys.append(np.full(len(f), y))
        steps.append(np.arange(len(f)))
    return (torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(vs)),
            torch.from_numpy(np.concatenate(ys)).long(), np.concatenate(steps))


def stream_windows(features: list[np.ndarray], labels: list[int], window: int):
    """The windows of one continuous stream: the clips back to back, the window sliding across clip
    boundaries as the real-time runtime's does (:class:`components.har.stream.HarPipeline` never
    resets it). X (T, window, D), valid (T, window), y (T, window): the label of every token (the
    clip its chunk came from; -1 where not valid). Window t ends at the stream's chunk t."""
    seq = np.concatenate(features)
    chunk_labels = np.concatenate([np.full(len(f), y) for f, y in zip(features, labels)])
    x, valid = windows(seq, window)
    T = len(seq)
    idx = np.arange(T)[:, None] - window + 1 + np.arange(window)[None, :]       # stream chunk of each token
    y = np.where(valid, chunk_labels[np.clip(idx, 0, T - 1)], -1)
    return torch.from_numpy(x), torch.from_numpy(valid), torch.from_numpy(y).long()


def training_windows(features: list[np.ndarray], labels: list[int], window: int, stream_passes: int,
                     seed: int):
    """What a head trains on: every clip's own windows (a stream starting with that clip) plus
    ``stream_passes`` continuous streams of all clips in a seeded random order, whose windows span
    clip boundaries as at run time. X (M, window, D), valid (M, window), y (M, window) per token."""
    x, v, y, _ = clip_windows(features, labels, window)
    xs, vs, ys = [x], [v], [torch.where(v, y[:, None].expand_as(v), -1)]
    rng = np.random.default_rng([seed, 7])
    for _ in range(stream_passes):
        order = rng.permutation(len(features))
        sx, sv, sy = stream_windows([features[i] for i in order], [labels[i] for i in order], window)
        xs.append(sx), vs.append(sv), ys.append(sy)
    return torch.cat(xs), torch.cat(vs), torch.cat(ys)


def train_head(x: torch.Tensor, valid: torch.Tensor, y: torch.Tensor, num_classes: int, cfg: TemporalConfig,
               seed: int, progress: Callable[..., None] | None = None, name: str = "head",
               progress_interval_s: float = 60.0) -> tuple[LstrHead, list[float]]:
    """Train on every valid short-window token (LSTR supervises the whole work memory). ``y``: one
    label per window (M,) or per token (M, window), as :func:`training_windows` gives.

    Progress: one line at the end, and in between at least every ``progress_interval_s`` seconds
    (``streams.TrainingProgress``; a quick-profile head takes a few seconds, a full-profile one longer)."""
    from components.har.streams import TrainingProgress, seed_everything

    gen = seed_everything(seed)
    report = TrainingProgress(progress, cfg.epochs, every=None, interval_s=progress_interval_s)
    batches = max(1, (len(x) + cfg.batch_size - 1) // cfg.batch_size)
    head = LstrHead(x.shape[-1], num_classes, cfg)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * batches
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.1)
    short_valid = valid[:, cfg.long_memory:]
    losses = []
    head.train()
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            logits = head(x[idx], valid[idx])
            mask = short_valid[idx]
            target = y[idx][:, None].expand_as(mask) if y.dim() == 1 else y[idx][:, cfg.long_memory:]
            loss = F.cross_entropy(logits[mask], target[mask])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            report.step("har %s: epoch %d/%d, batch %d/%d, running loss %.4f", name, epoch + 1, cfg.epochs,
                        i // cfg.batch_size + 1, batches, total / min(len(x), i + len(idx)))
        losses.append(total / len(x))
        if epoch + 1 < cfg.epochs:                      # the last epoch: the final line below
            report.epoch_end(epoch + 1, "har %s: epoch %d/%d loss %.4f", name, epoch + 1, cfg.epochs, losses[-1])
    if progress:
        progress("har %s: %d epochs, final loss %.4f", name, cfg.epochs, losses[-1])
    head.eval()
    return head, losses


@torch.no_grad()
def predict_last(head: LstrHead, x: torch.Tensor, valid: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """Class of the newest chunk of each window (the online prediction of that step)."""
    head.eval()
    return torch.cat([head(x[i:i + batch], valid[i:i + batch])[:, -1].argmax(-1) for i in range(0, len(x), batch)])
