"""Chunks of a clip and the tensors the networks take.

A chunk is ``clip_len`` consecutive frames (6 in TSN/IMFE). The RGB stream sees its centre frame
(index ``clip_len // 2``, mmaction2's convention), the flow stream its stacked flow, IMFE all its
frames. Normalisation follows the official code: ImageNet mean/std on the 0-255 scale for RGB;
mean 128 / std 128 for the uint8 flow.
"""
from __future__ import annotations

import numpy as np

from components.base import InputError

RGB_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
RGB_STD = np.array([58.395, 57.12, 57.375], np.float32)


def num_chunks(num_frames: int, clip_len: int) -> int:
    """Whole chunks in a clip of ``num_frames``; InputError for a clip shorter than one chunk."""
    if num_frames < clip_len:
        raise InputError(f"clip of {num_frames} frames; expected at least clip_len={clip_len} frames (one chunk)")
    return num_frames // clip_len


def split_chunks(frames: np.ndarray, clip_len: int) -> np.ndarray:
    """(T, H, W, 3) -> (T // clip_len, clip_len, H, W, 3); trailing frames are dropped."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"frames of shape {frames.shape}; expected (T, H, W, 3)")
    n = num_chunks(len(frames), clip_len)
    return frames[: n * clip_len].reshape(n, clip_len, *frames.shape[1:])


def centre_frames(chunks: np.ndarray) -> np.ndarray:
    """(N, L, H, W, 3) -> (N, H, W, 3): the frame each RGB feature is taken from."""
    return chunks[:, chunks.shape[1] // 2]


def rgb_tensor(frames: np.ndarray):
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32 normalised torch tensor."""
    import torch

    x = (frames.astype(np.float32) - RGB_MEAN) / RGB_STD
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, -3)))


def flow_tensor(q: np.ndarray):
    """(..., C, H, W) uint8 quantised flow -> float32 torch tensor, (q - 128) / 128."""
    import torch

    return torch.from_numpy((q.astype(np.float32) - FLOW_CENTRE) / FLOW_SCALE)


def flip_frames(frames: np.ndarray) -> np.ndarray:
    """Horizontal mirror of (..., H, W, 3) frames."""
    return np.ascontiguousarray(frames[..., :, ::-1, :])


FLOW_CODE_MAX = 255        # uint8 flow codes 0..255 stand for [-bound, bound] (opticalflow.quantize)
FLOW_CENTRE = FLOW_SCALE = 128.0   # flow_tensor's normalisation, (q - 128) / 128


def negate_flow_code(q):
    """The code of the negated flow: ``255 - q`` (numpy array or torch tensor, codes as numbers).

    The one definition of a sign change in code space: ``dequantize(255 - q) == -dequantize(q)`` and
    ``255 - quantize(x) == quantize(-x)`` (up to exact rounding ties). On normalised values
    ``n = (q - 128) / 128`` it is ``n' = -n - 1/128``, not ``-n`` (128 is not the codebook's centre)."""
    return FLOW_CODE_MAX - q


def flip_flow(q: np.ndarray) -> np.ndarray:
    """Horizontal mirror of (..., 2K, H, W) quantised flow: mirror the image and negate x."""
    out = np.ascontiguousarray(q[..., ::-1]).copy()
    out[..., 0::2, :, :] = negate_flow_code(out[..., 0::2, :, :])
    return out


def flip_flow_tensor(x):
    """``flip_flow`` on normalised flow (``flow_tensor``'s output, (..., 2K, H, W) torch tensor):
    the same mirror exactly, ``flow_tensor(flip_flow(q)) == flip_flow_tensor(flow_tensor(q))``."""
    out = x.flip(-1)
    xs = out[..., 0::2, :, :]
    out[..., 0::2, :, :] = (negate_flow_code(xs * FLOW_SCALE + FLOW_CENTRE) - FLOW_CENTRE) / FLOW_SCALE
    return out
