"""IMFE: shapes, the single-shot correlation, ONNX parity, distillation."""
from __future__ import annotations

import pytest
import torch

from components.har.config import ImfeConfig, StreamNetConfig
from components.har.imfe import ImfeNet, augment, distill, export_onnx, feature_mse, onnx_parity, shift
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
    with pytest.raises(ValueError, match="feature_dim=20; expected a multiple of 8"):
        ImfeNet(32, 32, 6, 20, CFG)                                  # a multiple of 4 is not enough
    assert ImfeNet(32, 32, 6, 24, CFG).eval()(torch.randn(1, 6, 3, 32, 32)).shape == (1, 24)


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
    # the val curve is the per-element MSE of the eval-mode net to the teacher, computed here
    # independently in one batch (feature_mse batches by 3: a ragged last batch must not bias it)
    with torch.no_grad():
        direct = float(((net.eval()(frames[16:]) - teacher.features(flows[16:])) ** 2).mean())
    assert hist["val_mse"][-1] == pytest.approx(direct, rel=1e-5)
    assert feature_mse(net, frames[16:], teacher.features, flows[16:], batch=3) == pytest.approx(direct, rel=1e-5)


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
        # the mirror of normalised 0 (code 128) is -1/128 (code 127): look at the square's flow only
        fl = fb[b] * (fb[b].abs() > 0.1)
        fx = float(fl[0::2].sum())
        assert moved * fx > 0 and abs(moved) == pytest.approx(2 * (N - 1), abs=0.5)
        assert _centroid_x(fl[0:1]) == pytest.approx(_centroid_x(fr[0]), abs=0.5)
        signs.add(fx > 0)
    assert signs == {True, False}                            # both mirrored and original samples drawn


def test_translation_does_not_wrap_around():
    """Content shifted out of the image is gone (no wrap to the other side, where its flow would not
    be the flow of the frames); the vacated band is 0 in frames and flow (static, no motion)."""
    x = torch.arange(1.0, 31.0).reshape(1, 5, 6)
    y = shift(x, 1, -2)
    assert torch.equal(y[0, 1:, :4], x[0, :4, 2:])
    assert (y[0, 0] == 0).all() and (y[0, :, 4:] == 0).all()
    assert torch.equal(shift(x, 0, 0), x)
    frames = torch.zeros(2, 6, 3, 16, 16)
    flows = torch.zeros(2, 10, 16, 16)
    frames[..., -1], flows[..., -1] = 1.0, 0.5            # content and motion in the last column only
    for seed in range(12):                                 # positive and negative shifts are drawn
        xb, fb = augment(frames, flows, torch.Generator().manual_seed(seed), flip=False)
        assert (fb[..., :12] == 0).all()
        assert (xb[..., :12] == xb[..., :1, :1]).all()     # background only (jitter's per-sample offset)


def test_device_option_is_resolved_and_a_missing_gpu_is_named():
    from components.base import InputError
    from components.har.experiment import torch_device

    assert torch_device("cpu").type == "cpu"
    assert torch_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="imfe.device='cuda:1'"):
            torch_device("cuda:1")


def test_relative_mse_is_one_minus_r2_against_the_teacher_variance():
    """A predictor of the per-dimension mean scores relative MSE 1 (R2 0), a perfect one 0 (R2 1),
    also for features with a large mean (where the mean square is far above the variance)."""
    from components.har.experiment import feature_variance, relative_mse

    g = torch.Generator().manual_seed(0)
    t = 3.0 + torch.randn(200, 16, generator=g) * torch.linspace(0.5, 2.0, 16)
    mean_pred = float(torch.nn.functional.mse_loss(t.mean(0).expand_as(t), t))
    assert feature_variance(t) == pytest.approx(mean_pred, rel=1e-5)
    r = relative_mse(mean_pred, t)
    assert r["val_relative_mse"] == pytest.approx(1.0, abs=1e-5) and r["val_r2"] == pytest.approx(0.0, abs=1e-5)
    assert relative_mse(0.0, t) == {"val_relative_mse": 0.0, "val_r2": 1.0}
    assert relative_mse(None, t) == {"val_relative_mse": None, "val_r2": None}


@pytest.mark.parametrize("total", [7, 49, 50, 99, 120, 450, 1234, 15000])
def test_exponential_decay_takes_exactly_50_steps_over_any_run(total):
    from components.har.imfe import DECAY_STEPS, decay_steps_due

    due = [decay_steps_due(s, total) for s in range(1, total + 1)]
    assert DECAY_STEPS == 50 and sum(due) == 50                # lr * gamma^50 at the end, as the official run
    if total % 50 == 0:                                         # the quick (450) and full (15000) runs: unchanged
        assert [s for s, d in enumerate(due, 1) if d] == list(range(total // 50, total + 1, total // 50))


def test_training_progress_is_never_silent_for_longer_than_the_interval():
    """Every 5th and the last epoch always report; in between, an epoch end or a step reports once
    ``interval_s`` has passed since the previous line, and not before (fake clock)."""
    from components.har.streams import TrainingProgress

    now = [0.0]
    lines: list[str] = []
    report = TrainingProgress(lambda msg, *a: lines.append(msg % a), epochs=7, interval_s=60.0,
                              clock=lambda: now[0])
    for epoch in range(1, 8):
        for step in range(1, 5):
            now[0] += 10.0                                   # 40 s per epoch
            report.step("e%d s%d", epoch, step)
        report.epoch_end(epoch, "e%d end", epoch)
    # due at t=60 (e2 s2), 120 (e3 s4), 180 (e5 s2); e5's end (t=200) is periodic; due again at 260
    # (e7 s2); e7's end is the last epoch. No epoch end before e5 reports: each is < 60 s after a line
    assert lines == ["e2 s2", "e3 s4", "e5 s2", "e5 end", "e7 s2", "e7 end"]
    silent = TrainingProgress(None, epochs=3, interval_s=0.0)
    silent.step("x")
    silent.epoch_end(3, "x")                                 # progress=None: nothing, no error


def test_distill_reports_inside_long_epochs():
    """With the interval at 0 every batch reports (a stand-in for an epoch longer than the interval);
    with a long interval only epochs 5, 10 and the last do."""
    torch.manual_seed(0)
    teacher = StreamNet(10, 4, StreamNetConfig(widths=[8, 16]).widths).eval()
    frames, flows = torch.randn(16, 6, 3, 32, 32), torch.randn(16, 10, 32, 32)
    cfg = CFG.model_copy(update={"epochs": 6, "batch_size": 8})
    fast: list[str] = []
    distill(frames, flows, teacher.features, cfg, 32, 32, seed=0, progress=lambda m, *a: fast.append(m % a),
            progress_interval_s=0.0)
    assert sum("batch" in line for line in fast) == 6 * 2
    assert "har imfe: epoch 1/6, batch 2/2" in fast[1]
    slow: list[str] = []
    distill(frames, flows, teacher.features, cfg, 32, 32, seed=0, progress=lambda m, *a: slow.append(m % a),
            progress_interval_s=1e9)
    assert [line.split(" train")[0] for line in slow] == ["har imfe: epoch 5/6", "har imfe: epoch 6/6"]
