"""The LSTR-style online head is causal and ignores padding."""
from __future__ import annotations

import numpy as np
import torch

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
    with torch.no_grad():
        out = head(x, valid)[:, -1]
        x2 = x.clone()
        x2[~valid] = 100.0                                   # garbage where nothing was seen yet
        assert torch.allclose(out, head(x2, valid)[:, -1], atol=1e-5)
        # the step-2 prediction is the same whether or not later chunks exist
        x3, v3, _, _ = clip_windows([seq[:3]], [0], 5)
        assert torch.allclose(out[2], head(x3, v3)[2, -1], atol=1e-5)
