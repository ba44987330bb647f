"""IMFE: the single-shot motion-feature extractor of RT-HARE, as in the official code
(rickywrq/RT-HARE ``utils/model.py`` ``DISTILLATION_RAFT_MODEL``), scaled to the clip resolution.

Six frames in, the flow-stream feature out, with no optical flow in between::

    frames (B, N=6, 3, H, W)
      -> RAFT feature encoder, all N frames as one batch         -> F_i (B, C, h, w),  h = H / s
      -> all-pairs correlation of each consecutive pair           corr_i = F_i^T F_{i+1} / sqrt(C)
         reshaped (B, h*w, h, w): channels = positions in frame i, space = positions in frame i+1
         (one level, one pass: no pyramid, no lookup window, no GRU refinement)
      -> compress: Conv2d(h*w -> K, 3x3), shared by the N-1 pairs; concatenate -> (N-1) K channels
      -> RAFT motion encoder without the flow branch: 1x1 -> ReLU -> 3x3 -> ReLU -> 3x3 -> ReLU
      -> mid Conv2d(1x1) -> ResNet layer3 + layer4 (Bottleneck, stride 2 each) -> global avg pool
      = motion feature, the dimension of the teacher's flow feature (official: 2048)

Trained by feature distillation, ``loss = MSE(IMFE(frames), teacher(TV-L1 flow))``, AdamW + ExponentialLR.
The official encoder strides are (2, 1, 2, 2) (/8 at 256x344); ``downsample=4`` drops the last
stride so that a 48-64 px clip keeps a 12-16 cell correlation grid.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from components.har.config import ImfeConfig


# ------------------------------------------------------------------------ RAFT feature encoder
# Same structure as torchvision.models.optical_flow.raft.{ResidualBlock, FeatureEncoder}, which the
# official code vendors in utils/raft_torch_vision.py (torchvision is not installable next to the
# +cpu torch wheel here, so it is restated rather than imported).
def _conv_norm_relu(cin: int, cout: int, k: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=True), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.convnormrelu1 = _conv_norm_relu(cin, cout, 3, stride)
        self.convnormrelu2 = _conv_norm_relu(cout, cout, 3)
        self.downsample = nn.Identity() if stride == 1 and cin == cout else _conv_norm_relu(cin, cout, 1, stride, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.downsample(x) + self.convnormrelu2(self.convnormrelu1(x)))


class FeatureEncoder(nn.Module):
    """RAFT's feature encoder: 7x7 conv, three 2-block residual stages, 1x1 conv to ``layers[4]``."""

    def __init__(self, layers: list[int], strides: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.convnormrelu = _conv_norm_relu(3, layers[0], 7, strides[0])
        self.layer1 = nn.Sequential(ResidualBlock(layers[0], layers[1], strides[1]), ResidualBlock(layers[1], layers[1]))
        self.layer2 = nn.Sequential(ResidualBlock(layers[1], layers[2], strides[2]), ResidualBlock(layers[2], layers[2]))
        self.layer3 = nn.Sequential(ResidualBlock(layers[2], layers[3], strides[3]), ResidualBlock(layers[3], layers[3]))
        self.conv = nn.Conv2d(layers[3], layers[4], 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.layer3(self.layer2(self.layer1(self.convnormrelu(x)))))


# ------------------------------------------------------------------------ ResNet-50 style head
class Bottleneck(nn.Module):
    """torchvision's ResNet Bottleneck (v1.5: stride on the 3x3), expansion 4."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


def _resnet_layer(cin: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [Bottleneck(cin, planes, stride)]
    layers += [Bottleneck(planes * 4, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------ IMFE
class ImfeNet(nn.Module):
    """(B, N, 3, H, W) normalised frames -> (B, feature_dim) motion feature."""

    def __init__(self, height: int, width: int, num_frames: int, feature_dim: int, cfg: ImfeConfig) -> None:
        super().__init__()
        if feature_dim % 8:
            raise ValueError(f"feature_dim={feature_dim}; expected a multiple of 8 (layer3 outputs "
                             f"4 * (feature_dim // 8) channels, layer4 takes feature_dim // 2)")
        s = cfg.downsample
        if height % s or width % s:
            raise ValueError(f"frame size {height}x{width}; expected multiples of imfe.downsample={s}")
        self.height, self.width, self.num_frames = height, width, num_frames
        self.h, self.w = height // s, width // s
        enc = cfg.encoder_widths
        self.encoder = FeatureEncoder(enc, (2, 1, 2, 2) if s == 8 else (2, 1, 2, 1))
        self.corr_dim = enc[4]
        # the compress conv's input channels are h*w: the network is tied to the input resolution
        self.compress = nn.Conv2d(self.h * self.w, cfg.compress_dim, 3, padding=1)
        m1, m2, m3 = cfg.motion_widths
        self.motion_encoder = nn.Sequential(
            nn.Conv2d((num_frames - 1) * cfg.compress_dim, m1, 1), nn.ReLU(inplace=True),
            nn.Conv2d(m1, m2, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(m2, m3, 3, padding=1), nn.ReLU(inplace=True))
        self.mid_conv = nn.Conv2d(m3, cfg.mid_dim, 1)
        self.layer3 = _resnet_layer(cfg.mid_dim, feature_dim // 8, cfg.head_blocks[0], 2)   # -> feature_dim / 2
        self.layer4 = _resnet_layer(feature_dim // 2, feature_dim // 4, cfg.head_blocks[1], 2)  # -> feature_dim
        self.feature_dim = feature_dim

    def correlation(self, f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        """All-pairs correlation, (B, C, h, w) x2 -> (B, h*w, h, w)."""
        B, C, h, w = f1.shape
        corr = torch.matmul(f1.flatten(2).transpose(1, 2), f2.flatten(2))  # corr_pq = <F1_p, F2_q>  (RAFT eq. 2)
        return (corr / math.sqrt(C)).view(B, h * w, h, w)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        B, N, C, H, W = frames.shape
        feats = self.encoder(frames.reshape(B * N, C, H, W)).view(B, N, self.corr_dim, self.h, self.w)
        pairs = [self.compress(self.correlation(feats[:, i], feats[:, i + 1])) for i in range(N - 1)]
        x = self.motion_encoder(torch.cat(pairs, dim=1))
        x = self.layer4(self.layer3(self.mid_conv(x)))
        return x.mean(dim=(2, 3))


# ------------------------------------------------------------------------ distillation
def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate (..., H, W) by (dy, dx) pixels without wrap-around: content moved out of the image
    is lost and the vacated band is filled with 0 (the mean colour of normalised frames; no motion
    in normalised flow)."""
    H, W = x.shape[-2:]
    out = torch.zeros_like(x)
    out[..., max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
        x[..., max(-dy, 0):H + min(-dy, 0), max(-dx, 0):W + min(-dx, 0)]
    return out


def augment(frames: torch.Tensor, flows: torch.Tensor, gen: torch.Generator,
            flip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The distillation's augmentation, applied to a batch of frames (B, N, 3, H, W) and their
    normalised TV-L1 flow (B, 2(N-1), H, W) *together*, so that the teacher's target is the feature
    of the flow of the frames IMFE sees: with ``flip`` a random half of the batch mirrored (frames
    mirrored; flow mirrored with its x components negated, ``chunks.flip_flow_tensor``); one random
    translation of up to 3 px for the whole batch (frames and flow alike, no wrap-around: the
    vacated border band is a constant frame region with zero flow); a colour jitter of the frames
    only."""
    from components.har.chunks import flip_flow_tensor
    from components.har.streams import colour_jitter

    if flip:
        sel = torch.rand(len(frames), generator=gen) < 0.5
        frames = torch.where(sel[:, None, None, None, None], frames.flip(-1), frames)
        flows = torch.where(sel[:, None, None, None], flip_flow_tensor(flows), flows)
    dy, dx = (int(v) for v in torch.randint(-3, 4, (2,), generator=gen))
    frames, flows = shift(frames, dy, dx), shift(flows, dy, dx)
    return colour_jitter(frames, gen), flows


DECAY_STEPS = 50   # ExponentialLR steps over a whole distillation run (the official 5 per epoch x 10)


def decay_steps_due(step: int, total_steps: int) -> int:
    """Scheduler steps to take after optimiser step ``step`` (1-based) of ``total_steps``: the
    increase of ``step * DECAY_STEPS // total_steps``, so a run takes exactly DECAY_STEPS of them,
    evenly spread (every ``total_steps / DECAY_STEPS`` steps when that divides, several at once on
    runs shorter than DECAY_STEPS)."""
    return step * DECAY_STEPS // total_steps - (step - 1) * DECAY_STEPS // total_steps


def distill(frames: torch.Tensor, flows: torch.Tensor, teacher: Callable[[torch.Tensor], torch.Tensor],
            cfg: ImfeConfig, height: int, width: int, seed: int,
            val: tuple[torch.Tensor, torch.Tensor] | None = None,
            progress: Callable[..., None] | None = None,
            device: str | torch.device = "cpu",
            progress_interval_s: float = 60.0) -> tuple[ImfeNet, dict[str, list[float]]]:
    """Distil IMFE onto ``teacher`` (the TV-L1 flow-stream feature).

    frames: (M, N, 3, H, W) normalised chunk frames; flows: (M, 2(N-1), H, W) normalised TV-L1
    flow of the same chunks. With ``cfg.flip`` a random half of every batch is mirrored (frames
    mirrored; flow mirrored with x negated), and each batch gets the same random translation in
    frames and flow plus a colour jitter of the frames; the target is always the teacher's feature of
    the (transformed) TV-L1 flow. Returns the net (eval mode) and the loss history.

    ``device``: where the net and each batch go (``teacher`` must already be there). The data stay
    on the CPU and the augmentation draws from the same CPU generator on every device, so a CUDA run
    sees the same batches as a CPU run.

    Progress: every 5 epochs and the last, and at least every ``progress_interval_s`` seconds,
    inside an epoch too (``streams.TrainingProgress``).
    """
    from components.har.streams import TrainingProgress, seed_everything

    gen = seed_everything(seed)
    report = TrainingProgress(progress, cfg.epochs, interval_s=progress_interval_s)
    N = frames.shape[1]
    device = torch.device(device)
    with torch.no_grad():
        dim = teacher(flows[:1].to(device)).shape[1]
    net = ImfeNet(height, width, N, dim, cfg).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.gamma)
    batches = max(1, (len(frames) + cfg.batch_size - 1) // cfg.batch_size)
    total_steps = cfg.epochs * batches
    # official: 5 scheduler steps per epoch over 10 epochs -> lr * gamma^50 at the end; the same total
    # decay is spread evenly over this run's steps (exactly DECAY_STEPS scheduler steps for any total)
    hist: dict[str, list[float]] = {"train_mse": [], "val_mse": []}
    step = 0
    for epoch in range(cfg.epochs):
        net.train()
        perm = torch.randperm(len(frames), generator=gen)
        total = 0.0
        for i in range(0, len(frames), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            xb, fb = augment(frames[idx], flows[idx], gen, cfg.flip)
            xb, fb = xb.to(device, non_blocking=True), fb.to(device, non_blocking=True)
            with torch.no_grad():
                target = teacher(fb)
            loss = F.mse_loss(net(xb), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            for _ in range(decay_steps_due(step, total_steps)):
                sched.step()
            total += loss.item() * len(idx)
            report.step("har imfe: epoch %d/%d, batch %d/%d, running train mse %.5f", epoch + 1, cfg.epochs,
                        i // cfg.batch_size + 1, batches, total / min(len(frames), i + len(idx)))
        hist["train_mse"].append(total / len(frames))
        if val is not None:
            hist["val_mse"].append(feature_mse(net, val[0], teacher, val[1]))
        report.epoch_end(epoch + 1, "har imfe: epoch %d/%d train mse %.5f%s", epoch + 1, cfg.epochs,
                         hist["train_mse"][-1], f" val mse {hist['val_mse'][-1]:.5f}" if val is not None else "")
    net.eval()
    return net, hist


def _device(net: nn.Module) -> torch.device:
    return next(net.parameters()).device


@torch.no_grad()
def imfe_features(net: ImfeNet, frames: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """IMFE features of (M, N, 3, H, W) frames, computed on the net's device, returned on the CPU."""
    net.eval()
    if not len(frames):
        return torch.empty(0, net.feature_dim)
    dev = _device(net)
    return torch.cat([net(frames[i:i + batch].to(dev)).cpu() for i in range(0, len(frames), batch)])


@torch.no_grad()
def feature_mse(net: ImfeNet, frames: torch.Tensor, teacher: Callable[[torch.Tensor], torch.Tensor],
                flows: torch.Tensor, batch: int = 64) -> float:
    net.eval()
    dev = _device(net)
    err, n = 0.0, 0
    for i in range(0, len(frames), batch):
        err += float(F.mse_loss(net(frames[i:i + batch].to(dev)), teacher(flows[i:i + batch].to(dev)),
                                reduction="sum"))
        n += frames[i:i + batch].numel() // frames[0].numel()
    return err / max(1, n) / net.feature_dim


# ------------------------------------------------------------------------ ONNX
def export_onnx(net: ImfeNet, path: str | Path, opset: int = 16) -> Path:
    """Export to ONNX (opset 16 as ``imfe_export_onnx.py``), batch dimension dynamic."""
    import warnings

    path = Path(path)
    net.eval()
    dummy = torch.zeros(1, net.num_frames, 3, net.height, net.width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (dummy,), str(path), input_names=["frames"], output_names=["motion_feature"],
                          dynamic_axes={"frames": {0: "batch"}, "motion_feature": {0: "batch"}},
                          opset_version=opset, dynamo=False)
    return path


def onnx_session(path: str | Path, threads: int = 1):
    import onnxruntime as ort

    from components.base import InputError

    if not Path(path).is_file():
        raise InputError(f"{path}: IMFE ONNX model not found; run the har imfe stage first (dvc repro har_imfe)")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's InvalidProtobuf / Fail on a corrupt file
        raise InputError(f"{path}: not a readable ONNX model ({type(err).__name__}: {str(err)[:200]}); re-run "
                         f"the har imfe stage") from None


def onnx_parity(net: ImfeNet, path: str | Path, frames: torch.Tensor) -> dict[str, float]:
    """Max absolute and relative difference between onnxruntime and PyTorch on ``frames``."""
    sess = onnx_session(path)
    with torch.no_grad():
        ref = net(frames).numpy()
    out = sess.run(["motion_feature"], {"frames": frames.numpy().astype(np.float32)})[0]
    diff = float(np.abs(out - ref).max())
    return {"max_abs_diff": diff, "max_rel_diff": diff / max(1e-12, float(np.abs(ref).max()))}
