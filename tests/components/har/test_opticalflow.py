"""Optical flow of the standard pipeline: storage, chunking, mirroring."""
from __future__ import annotations

import numpy as np
import pytest

from components.base import InputError
from components.har.chunks import flip_flow, flip_flow_tensor, flip_frames, flow_tensor, split_chunks
from components.har.config import OpticalFlowConfig
from components.har.opticalflow import (chunk_starts, clip_flows, dequantize, make_flow_fn, quantize,
                                        to_gray)


def _translating_texture(shift=(1.5, -1.0), n=6, size=48, seed=0):
    """Frames of a smooth random texture moving by ``shift`` (dx, dy) pixels per frame."""
    import cv2

    rng = np.random.default_rng(seed)
    big = cv2.GaussianBlur(rng.uniform(0, 255, (size * 2, size * 2, 3)).astype(np.float32), (0, 0), 2.0)
    frames = []
    for t in range(n):
        m = np.float32([[1, 0, -size / 2 + shift[0] * t], [0, 1, -size / 2 + shift[1] * t]])
        frames.append(cv2.warpAffine(big, m, (size, size), flags=cv2.INTER_LINEAR))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def test_quantisation_round_trip_within_one_step():
    flow = np.random.default_rng(0).uniform(-10, 10, (4, 8, 8)).astype(np.float32)
    q = quantize(flow, bound=8.0)
    assert q.dtype == np.uint8
    err = np.abs(dequantize(q, 8.0) - np.clip(flow, -8, 8))
    assert err.max() <= 8.0 / 255 + 1e-6


@pytest.mark.parametrize("method", ["tvl1", "farneback", "dis"])
def test_flow_recovers_a_known_translation(method):
    frames = _translating_texture()
    q, cpu = clip_flows(frames, method, OpticalFlowConfig())
    assert q.shape == (1, 10, 48, 48) and cpu > 0
    flow = dequantize(q[0], 8.0)[:, 8:-8, 8:-8]       # interior: away from the image border
    assert abs(np.median(flow[0::2]) - 1.5) < 0.3 and abs(np.median(flow[1::2]) + 1.0) < 0.3


def test_mirrored_frames_give_mirrored_flow():
    """flip_flow (mirror the image, negate x) is what TV-L1 computes on mirrored frames."""
    frames = _translating_texture(shift=(2.0, 0.5), n=3)
    cfg = OpticalFlowConfig()
    fn = make_flow_fn("tvl1", cfg)
    from components.har.opticalflow import chunk_flow

    direct = chunk_flow(to_gray(flip_frames(frames)), fn, cfg.bound).astype(float)
    mirrored = flip_flow(chunk_flow(to_gray(frames), fn, cfg.bound)).astype(float)
    diff = (direct - mirrored)[:, 8:-8, 8:-8]
    assert np.median(np.abs(diff)) == 0                                  # same code on most pixels
    assert np.abs(diff).mean() < 0.5 and abs(diff[0::2].mean()) < 0.25   # no x bias (TV-L1 is not exactly symmetric)


def test_flow_mirror_is_quantize_of_the_negated_flow_on_numpy_and_torch_alike():
    """One mirror for the stream CNNs (torch, normalised), the IMFE teacher targets (torch) and the
    heads (numpy, uint8): mirror(quantize(x)) == quantize(mirror(x)) exactly, on both paths."""
    import torch

    from components.har.streams import mirror

    rng = np.random.default_rng(0)
    flow = rng.uniform(-9, 9, (3, 10, 7, 9)).astype(np.float32)        # (chunks, 2K, H, W), some clipped
    flow[0, :, 0, :3] = [-8.0, 0.0, 8.0]                               # the ends and the centre of the codebook
    q = quantize(flow, 8.0)
    neg = flow[..., ::-1].copy()
    neg[:, 0::2] = -neg[:, 0::2]
    expected = quantize(neg, 8.0)
    expected[0, 0::2, 0, -2] = 127    # quantize(+-0) is 128 (a rounding tie); the mirror of code 128 is 127
    np.testing.assert_array_equal(flip_flow(q), expected)
    np.testing.assert_allclose(dequantize(flip_flow(q), 8.0)[:, 0::2], -dequantize(q, 8.0)[:, 0::2, :, ::-1], atol=1e-5)
    t = flow_tensor(q)
    assert torch.equal(flip_flow_tensor(t), flow_tensor(flip_flow(q)))
    assert torch.equal(mirror(t, "flow"), flow_tensor(flip_flow(q)))
    assert torch.equal(flip_flow_tensor(flip_flow_tensor(t)), t)         # an involution
    assert torch.equal(t, flow_tensor(q))                                # the input is not modified


def test_chunking_and_short_clips():
    assert chunk_starts(24, 6) == [0, 6, 12, 18]
    assert split_chunks(np.zeros((14, 8, 8, 3), np.uint8), 6).shape == (2, 6, 8, 8, 3)
    with pytest.raises(InputError, match="4 frames; expected at least clip_len=6"):
        chunk_starts(4, 6)
    with pytest.raises(InputError, match="expected at least clip_len=6"):
        split_chunks(np.zeros((5, 8, 8, 3), np.uint8), 6)


def test_random_shift_mirrors_the_motion_of_the_reflected_strips():
    """Reflect padding shows the scene mirrored at the border, so its flow is mirrored too: the x
    component changes sign in the left/right strips, y in the top/bottom ones (codes 255 - q). RGB (and
    the interior of flow) is only translated."""
    import torch

    from components.har.streams import random_shift

    q = np.zeros((1, 4, 8, 8), np.uint8)  # two flow pairs of a uniform motion, as codes (x at even channels)
    q[:, 0::2], q[:, 1::2] = 150, 90
    t = flow_tensor(q)
    batch = t.repeat(64, 1, 1, 1)
    out = random_shift(batch, 2, torch.Generator().manual_seed(0), "flow")
    vx, vy = float(t[0, 0, 0, 0]), float(t[0, 1, 0, 0])
    nx, ny = (float(flow_tensor(np.array([255 - c], np.uint8))[0]) for c in (150, 90))
    assert set(out[:, 0::2].unique().tolist()) == {vx, nx} and set(out[:, 1::2].unique().tolist()) == {vy, ny}
    for b in range(64):
        cols = (out[b, 0] == nx).any(dim=0)  # x negated: whole columns of the left/right strips
        rows = (out[b, 1] == ny).any(dim=1)  # y negated: whole rows of the top/bottom strips
        assert torch.equal((out[b, 0] == nx), cols[None, :].expand(8, 8))
        assert torch.equal((out[b, 1] == ny), rows[:, None].expand(8, 8))
        assert int(cols.sum()) <= 2 and int(rows.sum()) <= 2
        assert not (cols[2:6].any() or rows[2:6].any())  # the interior keeps its motion
    assert any(bool((out[b, 0] == nx).any()) for b in range(64))  # some samples were shifted
    rgb = torch.rand(4, 3, 8, 8)
    shifted = random_shift(rgb, 2, torch.Generator().manual_seed(0))
    assert set(shifted.unique().tolist()) <= set(rgb.unique().tolist())
