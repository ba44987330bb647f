"""IMFE: shapes, the single-shot correlation, ONNX parity, distillation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from components.har.config import ImfeConfig, StreamNetConfig
from components.har.imfe import ImfeNet, augment, distill, export_onnx, feature_mse, onnx_parity
from components.har.streams import StreamNet

CFG = ImfeConfig(encoder_widths=[8, 8, 12, 16, 16], compress_dim=8, motion_widths=[16, 16, 16], mid_dim=16)


def test_output_shape_and_resolution_tie():
    torch.manual_seed(0)
    net = ImfeNet(32, 48, 6, 64, CFG).eval()
    x = torch.randn(3, 6, 3, 32, 48)
    assert net(x).shape == (3, 64)
    assert net.compress.in_channels == (32 // 4) * (48 // 4)          # one channel per position of frame i
    assert ImfeNet(32, 32, 6, 64, CFG.model_copy(update={"downsample": 8})).compress.in_channels == 16
    with pytest.raises(RuntimeError):
        net(torch.randn(1, 6, 3, 48, 48))                            # tied to the training resolution
    with pytest.raises(ValueError, match="multiples of imfe.downsample"):
        ImfeNet(30, 32, 6, 64, CFG)


def test_correlation_is_all_pairs_dot_product():
    net = ImfeNet(32, 32, 6, 64, CFG)
    f1, f2 = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    corr = net.correlation(f1, f2)
    # channel = position p in frame i (row-major), spatial = position q in frame i+1
    p, q = (3, 5), (6, 1)
    expected = (f1[:, :, p[0], p[1]] * f2[:, :, q[0], q[1]]).sum(1) / 4.0
    torch.testing.assert_close(corr[:, p[0] * 8 + p[1], q[0], q[1]], expected)


def test_onnx_export_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    net = ImfeNet(32, 32, 6, 64, CFG).eval()
    path = export_onnx(net, tmp_path / "imfe.onnx", opset=16)
    parity = onnx_parity(net, path, torch.randn(2, 6, 3, 32, 32))
    assert parity["max_abs_diff"] < 1e-4 and parity["max_rel_diff"] < 1e-4


def test_distillation_loss_decreases():
    """MSE to a fixed teacher's flow feature falls during training, on the training and on unseen chunks."""
    torch.manual_seed(0)
    teacher = StreamNet(10, 4, StreamNetConfig(widths=[8, 16]).widths).eval()
    g = torch.Generator().manual_seed(1)
    frames = torch.randn(24, 6, 3, 32, 32, generator=g)
    # flow correlated with the frames' temporal differences, so that there is something to learn
    flows = (frames[:, 1:] - frames[:, :-1]).mean(2, keepdim=True).repeat(1, 1, 2, 1, 1).flatten(1, 2)
    cfg = CFG.model_copy(update={"epochs": 6, "batch_size": 8, "lr": 3e-3})
    net, hist = distill(frames[:16], flows[:16], teacher.features, cfg, 32, 32, seed=0,
                        val=(frames[16:], flows[16:]))
    assert hist["train_mse"][-1] < 0.75 * hist["train_mse"][0]
    assert hist["val_mse"][-1] < hist["val_mse"][0]
    assert feature_mse(net, frames[16:], teacher.features, flows[16:]) == pytest.approx(hist["val_mse"][-1])


def test_imfe_overfits_a_tiny_fixed_batch_of_teacher_targets():
    """Sanity check of the model and its input path (frame layout, correlation, head): on 4 fixed
    chunks and their teacher features, without augmentation, the distillation loss must fall by
    >= 90 %. A broken input pipeline or a detached/wrongly-scaled correlation cannot do this. (On
    the quick-profile data the same check falls from 0.48 to 0.03 in 150 steps.)"""
    torch.manual_seed(0)
    teacher = StreamNet(10, 4, StreamNetConfig(widths=[8, 16]).widths).eval()
    g = torch.Generator().manual_seed(2)
    frames = torch.randn(4, 6, 3, 32, 32, generator=g)
    flows = torch.randn(4, 10, 32, 32, generator=g)
    with torch.no_grad():
        target = teacher.features(flows)
    net = ImfeNet(32, 32, 6, target.shape[1], CFG)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    net.train()
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.mse_loss(net(frames), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    net.eval()
    with torch.no_grad():
        final = float(torch.nn.functional.mse_loss(net(frames), target))
    assert losses[-1] < 0.1 * losses[0]
    assert final < 0.1 * losses[0]                      # also in eval mode (BatchNorm running stats)


def _centroid_x(img: torch.Tensor) -> float:
    w = img.abs().sum(0)                                    # (H, W)
    return float((w.sum(0) * torch.arange(w.shape[1])).sum() / w.sum())


def test_augmentation_keeps_the_target_flow_consistent_with_the_frames():
    """A square moving right by 2 px per frame, flow x = +2 px on it: after the distillation's
    augmentation (random mirror, translation, colour jitter), every sample's flow must still say
    what its frames show: mirrored samples move left and carry negative x-flow, and the flow of pair
    i sits where the square is in frame i."""
    B, N, H, W = 16, 6, 32, 32
    frames = torch.zeros(B, N, 3, H, W)
    flows = torch.zeros(B, 2 * (N - 1), H, W)
    for i in range(N):
        frames[:, i, :, 12:18, 4 + 2 * i:10 + 2 * i] = 1.0
        if i < N - 1:
            flows[:, 2 * i, 12:18, 4 + 2 * i:10 + 2 * i] = 2.0 / 8.0   # normalised: px / bound
    xb, fb = augment(frames, flows, torch.Generator().manual_seed(0), flip=True)
    signs = set()
    for b in range(B):
        fr = xb[b] - xb[b, :, :, :1, :1]                     # remove the jitter's offset (corner = background)
        moved = _centroid_x(fr[N - 1]) - _centroid_x(fr[0])
        fx = float(fb[b, 0::2].sum())
        assert moved * fx > 0 and abs(moved) == pytest.approx(2 * (N - 1), abs=0.5)
        assert _centroid_x(fb[b, 0:1]) == pytest.approx(_centroid_x(fr[0]), abs=0.5)
        signs.add(fx > 0)
    assert signs == {True, False}                            # both mirrored and original samples drawn


def test_device_option_is_resolved_and_a_missing_gpu_is_named():
    from components.base import InputError
    from components.har.experiment import torch_device

    assert torch_device("cpu").type == "cpu"
    assert torch_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="imfe.device='cuda:1'"):
            torch_device("cuda:1")
