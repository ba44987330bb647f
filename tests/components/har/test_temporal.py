"""The LSTR-style online head is causal and ignores padding."""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from components.har.config import TemporalConfig
from components.har.temporal import LstrHead, clip_windows, windows

CFG = TemporalConfig(d_model=16, heads=2, long_memory=3, short_window=2, latent_queries=2, dropout=0.0)


def test_windows_are_causal_and_left_padded():
    seq = np.arange(4, dtype=np.float32)[:, None] + 1
    w, v = windows(seq, 3)
    assert w[:, :, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4]]
    assert v.tolist() == [[False, False, True], [False, True, True], [True] * 3, [True] * 3]
    x, valid, y, steps = clip_windows([seq, seq[:2]], [3, 1], 3)
    assert x.shape == (6, 3, 1) and y.tolist() == [3, 3, 3, 3, 1, 1] and steps.tolist() == [0, 1, 2, 3, 0, 1]


def test_prediction_ignores_padding_and_the_future():
    torch.manual_seed(0)
    head = LstrHead(8, 5, CFG).eval()
    seq = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
    x, valid, _, _ = clip_windows([seq], [0], 5)
    short_valid = valid[:, CFG.long_memory:]
    with torch.no_grad():
        full = head(x, valid)
        out = full[:, -1]
        # garbage where nothing was seen yet: random and large, so no LayerNorm can normalise it away
        # (a constant fill would be, and a missing padding mask would go unnoticed)
        gen = torch.Generator().manual_seed(1)
        x2 = x.clone()
        x2[~valid] = torch.randn(int((~valid).sum()), 8, generator=gen) * 10
        garbage = head(x2, valid)
        assert torch.allclose(out, garbage[:, -1], atol=1e-5)
        # every valid short-window token (not only the newest) ignores the padding
        assert torch.allclose(full[short_valid], garbage[short_valid], atol=1e-5)
        # and the garbage would matter if it were attended to: the same values marked valid change the output
        assert not torch.allclose(out, head(x2, torch.ones_like(valid))[:, -1], atol=1e-3)
        # the step-2 prediction is the same whether or not later chunks exist
        x3, v3, _, _ = clip_windows([seq[:3]], [0], 5)
        assert torch.allclose(out[2], head(x3, v3)[2, -1], atol=1e-5)


def test_padding_of_the_long_memory_and_of_the_short_window_are_each_masked():
    """Windows whose padding lies only in the long memory, or reaches into the short window."""
    torch.manual_seed(0)
    head = LstrHead(8, 5, CFG).eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 8, generator=gen)
    valid = torch.tensor([[False, True, True, True, True],        # one padded long-memory token
                          [False, False, False, False, True]])    # padding reaches the short window
    x = torch.where(valid[..., None], x, torch.zeros(()))
    with torch.no_grad():
        out = head(x, valid)
        for b in range(2):
            x2 = x.clone()
            x2[b][~valid[b]] = torch.randn(int((~valid[b]).sum()), 8, generator=gen) * 10
            sv = valid[b, CFG.long_memory:]
            assert torch.allclose(out[b][sv], head(x2, valid)[b][sv], atol=1e-5)


def test_short_window_is_causal():
    """A short-window token's output does not depend on newer tokens of the window."""
    torch.manual_seed(0)
    cfg = TemporalConfig(d_model=16, heads=2, long_memory=2, short_window=3, latent_queries=2, dropout=0.0)
    head = LstrHead(8, 5, cfg).eval()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 8, generator=gen)
    valid = torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        out = head(x, valid)
        for t in range(cfg.short_window):                  # perturb short token t
            x2 = x.clone()
            x2[:, cfg.long_memory + t] = torch.randn(2, 8, generator=gen) * 5
            out2 = head(x2, valid)
            assert torch.allclose(out[:, :t], out2[:, :t], atol=1e-5)     # older tokens: unchanged
            assert not torch.allclose(out[:, t], out2[:, t], atol=1e-3)   # the token itself: changed
            for later in range(t + 1, cfg.short_window):                 # newer tokens do attend to it
                assert not torch.allclose(out[:, later], out2[:, later], atol=1e-3)


def test_stream_windows_span_clip_boundaries_with_a_label_per_token():
    from components.har.temporal import stream_windows

    a = np.full((3, 1), 1.0, np.float32)
    b = np.full((2, 1), 2.0, np.float32)
    x, valid, y = stream_windows([a, b], [4, 7], 3)
    assert x.shape == (5, 3, 1) and x[:, :, 0].tolist() == [[0, 0, 1], [0, 1, 1], [1, 1, 1], [1, 1, 2], [1, 2, 2]]
    assert y.tolist() == [[-1, -1, 4], [-1, 4, 4], [4, 4, 4], [4, 4, 7], [4, 7, 7]]
    assert valid.tolist() == (y >= 0).tolist()


def test_training_windows_add_seeded_streams_and_train_head_supervises_every_token():
    from components.har.temporal import train_head, training_windows

    rng = np.random.default_rng(1)
    feats = [rng.normal(size=(3, 8)).astype(np.float32) for _ in range(6)]
    labels = [0, 1, 2, 0, 1, 2]
    x0, v0, y0 = training_windows(feats, labels, 5, 0, seed=0)
    x2, v2, y2 = training_windows(feats, labels, 5, 2, seed=0)
    assert len(x0) == 18 and len(x2) == 18 * 3 and torch.equal(x2[:18], x0)       # clip windows first
    assert (y2[v2.logical_not()] == -1).all() and (y2[v2] >= 0).all()
    assert bool(v2[18:].all(1).any()) and not bool(v0.all(1).any())              # only streams fill the window
    again = training_windows(feats, labels, 5, 2, seed=0)
    assert torch.equal(again[0], x2) and not torch.equal(training_windows(feats, labels, 5, 2, seed=1)[0], x2)
    cfg = TemporalConfig(d_model=16, heads=2, long_memory=3, short_window=2, latent_queries=2, dropout=0.0,
                         epochs=2, batch_size=8)
    head, losses = train_head(x2, v2, y2, 3, cfg, seed=0)
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_train_head_loss_is_the_mean_over_every_valid_short_window_token(monkeypatch):
    """With one batch and one epoch the reported loss is the cross-entropy of the freshly initialised
    head over every valid short-window token (each with its own label), not only the newest one."""
    from components.har import temporal
    from components.har.streams import seed_everything
    from components.har.temporal import train_head, training_windows

    rng = np.random.default_rng(4)
    feats = [rng.normal(size=(n, 8)).astype(np.float32) for n in (3, 4, 2)]
    x, v, y = training_windows(feats, [0, 1, 2], 5, 1, seed=0)
    cfg = TemporalConfig(d_model=16, heads=2, long_memory=3, short_window=2, latent_queries=2, dropout=0.0,
                         epochs=1, batch_size=len(x))
    sv, sy = v[:, cfg.long_memory:], y[:, cfg.long_memory:]
    assert bool((sv.sum(1) == 2).any()) and bool((sv.sum(1) == 1).any())
    assert bool((sy[:, 0] != sy[:, 1])[sv.all(1)].any())        # some windows span a clip boundary
    seen = []
    real_ce = temporal.F.cross_entropy
    monkeypatch.setattr(temporal.F, "cross_entropy", lambda logits, target, *a, **k: (
        seen.append(target.clone()), real_ce(logits, target, *a, **k))[1])
    _, losses = train_head(x, v, y, 3, cfg, seed=0)
    monkeypatch.undo()
    assert len(seen) == 1 and sorted(seen[0].tolist()) == sorted(sy[sv].tolist())
    seed_everything(0)
    fresh = LstrHead(8, 3, cfg).train()
    with torch.no_grad():
        expected = float(F.cross_entropy(fresh(x, v)[sv], sy[sv]))
    assert abs(losses[0] - expected) < 1e-5


def test_runtime_pipeline_on_a_continuous_stream_equals_the_stream_windows():
    """What the evaluate stage scores as ``stream_accuracy`` is what HarPipeline predicts when the
    clips arrive back to back (one window, never reset)."""
    from components.har.stream import HarPipeline
    from components.har.temporal import predict_last, stream_windows

    torch.manual_seed(0)
    head = LstrHead(8, 5, CFG).eval()
    rng = np.random.default_rng(2)
    clip_len, n_chunks = 2, [3, 3, 2]
    frames = [rng.integers(0, 255, size=(clip_len * n, 4, 4, 3), dtype=np.uint8) for n in n_chunks]

    def feat(chunk):  # a deterministic per-chunk feature (stands in for the RGB + motion streams)
        return np.concatenate([chunk.reshape(len(chunk), -1).mean(1), np.zeros(8 - len(chunk))]).astype(np.float32)

    with torch.no_grad():
        classify = lambda x, v: int(head(torch.from_numpy(x[None]), torch.from_numpy(v[None]))[0, -1].argmax())  # noqa: E731
        pipe = HarPipeline(clip_len, CFG.long_memory + CFG.short_window, (4, 4), rgb=lambda f: np.zeros(0, np.float32),
                           motion=feat, head=classify)
        live = [p for f in np.concatenate(frames) if (p := pipe(f)) is not None]
        per_clip = [np.stack([feat(c) for c in f.reshape(-1, clip_len, 4, 4, 3)]) for f in frames]
        x, v, _ = stream_windows(per_clip, [0, 1, 2], CFG.long_memory + CFG.short_window)
        assert live == predict_last(head, x, v).tolist() and len(live) == sum(n_chunks)


def test_clip_features_file_round_trips_clips_of_any_length(tmp_path):
    """The evaluate stage hands each head job its features through one file per source."""
    from components.har.experiment import load_clip_features, save_clip_features

    rng = np.random.default_rng(0)
    train = [rng.normal(size=(n, 5)).astype(np.float32) for n in (3, 1, 4)]
    test = [rng.normal(size=(2, 5)).astype(np.float32)]
    save_clip_features(tmp_path / "f.npz", train=train, test=test)
    for name, feats in (("train", train), ("test", test)):
        back = load_clip_features(tmp_path / "f.npz", name)
        assert [b.shape for b in back] == [f.shape for f in feats]
        assert all(b.dtype == np.float32 and np.array_equal(b, f) for b, f in zip(back, feats))
