"""The two stream CNNs of the standard pipeline (the TSN ResNet-50 feature extractors, scaled down).

``StreamNet(in_channels=3)`` is the RGB stream (centre frame of a chunk); ``StreamNet(in_channels=10)``
the flow stream (5 stacked flow pairs). Each is a small ResNet (basic blocks, a stride-2 stage per
width) trained as a TSN segment classifier on the chunk's clip label; the **feature** is the
global-average-pooled output before the classifier (TSN-R50's 2048-d feature; here ``widths[-1]``).
The flow stream trained on TV-L1 flow is IMFE's teacher.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from components.har.config import StreamNetConfig


class TrainingProgress:
    """Progress lines of a training loop that are never far apart in time.

    ``epoch_end`` reports every ``every`` epochs (None: none) and the last one, and also any epoch
    that ends ``interval_s`` or more after the previous line; ``step`` reports inside an epoch once
    ``interval_s`` has passed since the previous line (a long epoch: the 400-clips-per-class
    distillation runs ~170 s per epoch on 2 CPU cores). ``progress=None`` reports nothing.
    ``clock`` is injectable for tests."""

    def __init__(self, progress: Callable[..., None] | None, epochs: int, every: int | None = 5,
                 interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.progress, self.epochs, self.every, self.interval_s, self.clock = progress, epochs, every, interval_s, clock
        self.last = clock()

    def _emit(self, msg: str, *args: Any) -> None:
        assert self.progress is not None
        self.progress(msg, *args)
        self.last = self.clock()

    def _due(self) -> bool:
        return self.clock() - self.last >= self.interval_s

    def step(self, msg: str, *args: Any) -> None:
        if self.progress and self._due():
            self._emit(msg, *args)

    def epoch_end(self, epoch: int, msg: str, *args: Any) -> None:
        """``epoch``: 1-based."""
        if self.progress and ((self.every and epoch % self.every == 0) or epoch == self.epochs or self._due()):
            self._emit(msg, *args)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs, BatchNorm, identity or 1x1 projection shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.short(x))


class StreamNet(nn.Module):
    """(B, C, H, W) -> logits (B, classes); ``features(x)`` -> (B, widths[-1])."""

    def __init__(self, in_channels: int, num_classes: int, widths: list[int], dropout: float = 0.5) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages, cin = [], widths[0]
        for w in widths:
            stages.append(BasicBlock(cin, w, stride=2))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.feature_dim = cin
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.features(x)))


def seed_everything(seed: int) -> torch.Generator:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator, kind: str = "rgb") -> torch.Tensor:
    """Translate a batch (B, ..., H, W) by one random integer offset per sample (reflect padding).

    ``kind="flow"``: ``x`` is stacked normalised flow (B, 2K, H, W; x components at even channels, as
    ``chunks.flip_flow_tensor`` has them). A reflected strip shows the scene mirrored, so its motion is
    mirrored too: the x component changes sign in the left and right strips, the y component in the top
    and bottom ones (both in the corners), with ``chunks.negate_flow_code``'s sign change."""
    if max_shift <= 0:
        return x
    B, H, W = x.shape[0], x.shape[-2], x.shape[-1]
    flat = x.reshape(B, -1, H, W)
    pad = F.pad(flat, (max_shift,) * 4, mode="reflect")
    if kind == "flow":
        from components.har.chunks import FLOW_CENTRE, FLOW_SCALE, negate_flow_code

        def neg(t: torch.Tensor) -> torch.Tensor:
            return (negate_flow_code(t * FLOW_SCALE + FLOW_CENTRE) - FLOW_CENTRE) / FLOW_SCALE

        m = max_shift
        for sl in (np.s_[..., :m], np.s_[..., W + m:]):
            xs = pad[:, 0::2][sl]
            pad[:, 0::2][sl] = neg(xs)
        for sl in (np.s_[..., :m, :], np.s_[..., H + m:, :]):
            ys = pad[:, 1::2][sl]
            pad[:, 1::2][sl] = neg(ys)
    out = torch.empty_like(flat)
    offs = torch.randint(0, 2 * max_shift + 1, (B, 2), generator=gen)
    for b in range(B):
        dy, dx = int(offs[b, 0]), int(offs[b, 1])
        out[b] = pad[b, :, dy:dy + H, dx:dx + W]
    return out.reshape(x.shape)


def colour_jitter(x: torch.Tensor, gen: torch.Generator, strength: float = 0.25) -> torch.Tensor:
    """Per-sample gain and offset per colour channel on normalised frames (B, [N,] 3, H, W); all N
    frames of a sample get the same change, so the motion between them is untouched."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 4) + (3, 1, 1)
    gain = 1 + strength * (2 * torch.rand(shape, generator=gen) - 1)
    bias = strength * (2 * torch.rand(shape, generator=gen) - 1)
    return x * gain + bias


def mirror(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Horizontal mirror of a batch: images (B, 3, H, W) or stacked normalised flow (B, 2K, H, W),
    whose x components change sign (``chunks.flip_flow_tensor``, the same mirror as ``flip_flow``)."""
    if kind == "flow":
        from components.har.chunks import flip_flow_tensor

        return flip_flow_tensor(x)
    return x.flip(-1)


def train_stream(x: torch.Tensor, y: torch.Tensor, kind: str, num_classes: int, cfg: StreamNetConfig,
                 seed: int, mirror_label: torch.Tensor | None = None, progress: Callable[..., None] | None = None,
                 name: str = "stream", progress_interval_s: float = 60.0) -> tuple[StreamNet, list[float]]:
    """Train a stream CNN (``kind`` "rgb" or "flow") on chunk inputs ``x`` (N, C, H, W) with clip
    labels ``y``; return the net (eval mode) and the mean training loss per epoch.

    Augmentation (the same for every stream): a random translation of up to 3 px (reflect padding;
    for flow the reflected strips' motion mirrored, see :func:`random_shift`); with ``cfg.flip``
    a random half of each batch mirrored (labels through ``mirror_label``); colour jitter for RGB.
    Progress: every 5 epochs, and at least every ``progress_interval_s`` seconds (``TrainingProgress``)."""
    gen = seed_everything(seed)
    report = TrainingProgress(progress, cfg.epochs, interval_s=progress_interval_s)
    batches = max(1, (len(x) + cfg.batch_size - 1) // cfg.batch_size)
    net = StreamNet(x.shape[1], num_classes, cfg.widths)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * batches
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.2)
    mirror_label = mirror_label if mirror_label is not None else torch.arange(num_classes)
    losses = []
    net.train()
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            xb, yb = random_shift(x[idx], 3, gen, kind), y[idx]
            if cfg.flip:
                flip = torch.rand(len(idx), generator=gen) < 0.5
                xb = torch.where(flip[:, None, None, None], mirror(xb, kind), xb)
                yb = torch.where(flip, mirror_label[yb], yb)
            if kind == "rgb":
                xb = colour_jitter(xb, gen)
            loss = F.cross_entropy(net(xb), yb, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            report.step("har %s: epoch %d/%d, batch %d/%d, running loss %.4f", name, epoch + 1, cfg.epochs,
                        i // cfg.batch_size + 1, batches, total / min(len(x), i + len(idx)))
        losses.append(total / len(x))
        report.epoch_end(epoch + 1, "har %s: epoch %d/%d loss %.4f", name, epoch + 1, cfg.epochs, losses[-1])
    net.eval()
    return net, losses


@torch.no_grad()
def stream_features(net: StreamNet, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    net.eval()
    return torch.cat([net.features(x[i:i + batch]) for i in range(0, len(x), batch)]) if len(x) else \
        torch.empty(0, net.feature_dim)


@torch.no_grad()
def stream_accuracy(net: StreamNet, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    net.eval()
    pred = torch.cat([net(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return float((pred == y).float().mean())
