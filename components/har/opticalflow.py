"""Classical optical flow, the "standard" motion source of the two-stream pipeline.

TV-L1 (OpenCV contrib ``DualTVL1OpticalFlow``, the teacher's flow as in mmaction2/denseflow) and the
cheap alternatives Farnebäck and DIS. A clip is cut into chunks of ``clip_len`` frames (TSN/IMFE:
6 frames, centres at 3, 9, 15, ...); each chunk gives ``clip_len - 1`` flow pairs, stacked as
``2 (clip_len - 1)`` channels (x0, y0, x1, y1, ...). Flow is stored the way denseflow stores it:
clipped to ``+-bound`` pixels and quantised to uint8 (128 = zero motion); the flow CNN normalises it
with mean 128 / std 128 as mmaction2's TSN feature extractor does.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from components.har.chunks import num_chunks
from components.har.config import OpticalFlowConfig

FLOW_METHODS = ("tvl1", "farneback", "dis")


def make_flow_fn(method: str, cfg: OpticalFlowConfig) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``fn(prev_gray, next_gray) -> (H, W, 2) float32`` flow for ``method``."""
    import cv2

    if method == "tvl1":
        t = cfg.tvl1
        tvl1 = cv2.optflow.DualTVL1OpticalFlow_create(
            tau=t.tau, lambda_=t.lambda_, theta=t.theta, nscales=t.nscales, warps=t.warps,
            epsilon=t.epsilon, innnerIterations=t.inner_iterations, outerIterations=t.outer_iterations,
            scaleStep=t.scale_step)
        return lambda a, b: tvl1.calc(a, b, None)
    if method == "farneback":
        # OpenCV sample settings (pyr_scale 0.5, 3 levels, window 15, 3 iterations, poly_n 5, sigma 1.2)
        return lambda a, b: cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    if method == "dis":
        preset = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                  "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}[cfg.dis_preset]
        dis = cv2.DISOpticalFlow_create(preset)
        return lambda a, b: dis.calc(a, b, None)
    raise ValueError(f"flow method {method!r}; expected one of {list(FLOW_METHODS)}")


def to_gray(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (T, H, W) uint8 luma."""
    w = np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(frames.astype(np.float32) @ w + 0.5, 0, 255).astype(np.uint8)


def quantize(flow: np.ndarray, bound: float) -> np.ndarray:
    """denseflow's storage: clip to +-bound, map [-bound, bound] -> [0, 255] uint8."""
    return np.round((np.clip(flow, -bound, bound) + bound) * (255.0 / (2 * bound))).astype(np.uint8)


def dequantize(q: np.ndarray, bound: float) -> np.ndarray:
    return q.astype(np.float32) * (2 * bound / 255.0) - bound


def chunk_starts(num_frames: int, clip_len: int) -> list[int]:
    """First frame of every whole chunk (centres at clip_len//2, +clip_len, ... as in IMFE's sampler)."""
    return [k * clip_len for k in range(num_chunks(num_frames, clip_len))]


def chunk_flow(gray: np.ndarray, fn: Callable[[np.ndarray, np.ndarray], np.ndarray], bound: float) -> np.ndarray:
    """Stacked flow of one chunk of grey frames (L, H, W): ``(2 (L-1), H, W)`` uint8."""
    pairs = [fn(gray[i], gray[i + 1]) for i in range(len(gray) - 1)]
    return quantize(np.stack(pairs).transpose(0, 3, 1, 2).reshape(-1, *gray.shape[1:]), bound)


def clip_flows(frames: np.ndarray, method: str, cfg: OpticalFlowConfig) -> tuple[np.ndarray, float]:
    """Stacked flow of every chunk of a clip, ``(chunks, 2 (L-1), H, W)`` uint8, and the CPU seconds
    spent in the flow computation (per clip)."""
    fn = make_flow_fn(method, cfg)
    gray = to_gray(frames)
    out, spent = [], 0.0
    for s in chunk_starts(len(frames), cfg.clip_len):
        t0 = time.process_time()
        out.append(chunk_flow(gray[s:s + cfg.clip_len], fn, cfg.bound))
        spent += time.process_time() - t0
    return np.stack(out), spent
