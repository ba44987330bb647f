"""Video files in and out (PyAV / H.264), with clear errors for bad input.

``write_video`` encodes RGB uint8 frames to an MP4 (libx264, single-threaded so the bytes are
deterministic) atomically; ``read_video`` decodes a file to ``(T, H, W, 3)`` uint8 RGB and checks
the frame size and length the caller expects; ``iter_frames`` streams frames for the real-time
runtime without loading the whole file.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from components.base import InputError


def write_video(path: str | os.PathLike[str], frames: np.ndarray, fps: int, crf: int = 17) -> Path:
    """Encode ``frames`` (T, H, W, 3) uint8 RGB to an H.264 MP4 at ``path`` (atomic)."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InputError(f"{path}: frames of shape {frames.shape} dtype {frames.dtype}; "
                         f"expected (T, H, W, 3) uint8 RGB")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise InputError(f"{path}: frame size {frames.shape[1]}x{frames.shape[2]}; expected even sides")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=".mp4", dir=path.parent)
    os.close(fd)
    try:
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
            stream.pix_fmt = "yuv444p"   # full-resolution chroma: the clips are tiny
            # x264 threads make the bytes nondeterministic, and so, even on one thread, does its
            # macroblock-tree rate control: on this VM it gave different bytes for the same frames in
            # 24 of 64 48x48 clips encoded twice in one process (0 of 64 with mbtree=0; the lookahead's
            # low-resolution planes of these tiny frames appear to be read uninitialised)
            stream.options = {"crf": str(crf), "preset": "fast", "x264-params": "mbtree=0"}
            stream.codec_context.thread_count = 1
            container.metadata["comment"] = "paperworks har synthetic action clip"
            for i, frame in enumerate(frames):
                vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
                vf.pts = i   # explicit timestamps, in frames (the codec's time base is 1/fps)
                for packet in stream.encode(vf):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _open(path: Path):
    import av

    if not path.is_file():
        raise InputError(f"video {path}: file not found; expected a readable video file (mp4, avi, ...)")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as err:
        raise InputError(f"video {path}: cannot be read as a video ({err})") from None
    if not container.streams.video:
        container.close()
        raise InputError(f"video {path}: contains no video stream")
    return container


def iter_frames(path: str | os.PathLike[str], size: tuple[int, int] | None = None,
                resize: bool = False) -> Iterator[np.ndarray]:
    """Yield RGB uint8 frames of ``path`` one at a time.

    ``size=(H, W)``: frames of another size are resized when ``resize`` is true, otherwise an
    :class:`InputError` names the file, the size found and the size expected.
    """
    import av
    import cv2

    path = Path(path)
    with _open(path) as container:
        try:
            for frame in container.decode(video=0):
                img = frame.to_ndarray(format="rgb24")
                if size is not None and img.shape[:2] != tuple(size):
                    if not resize:
                        raise InputError(f"video {path}: frame size {img.shape[0]}x{img.shape[1]} (HxW); "
                                         f"expected {size[0]}x{size[1]} (pass resize to rescale)")
                    img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
                yield img
        except av.error.FFmpegError as err:
            raise InputError(f"video {path}: decoding failed ({err})") from None


def read_video(path: str | os.PathLike[str], size: tuple[int, int] | None = None,
               min_frames: int = 1, max_frames: int | None = None, resize: bool = False) -> np.ndarray:
    """All frames (up to ``max_frames``) of ``path`` as ``(T, H, W, 3)`` uint8 RGB.

    Raises :class:`InputError` for a missing/unreadable file, a wrong frame size (see
    :func:`iter_frames`) or fewer than ``min_frames`` frames.
    """
    frames = []
    for img in iter_frames(path, size, resize):
        frames.append(img)
        if max_frames is not None and len(frames) >= max_frames:
            break
    if len(frames) < min_frames:
        raise InputError(f"video {path}: {len(frames)} frames; expected at least {min_frames} "
                         f"(one window of the pipeline)")
    return np.stack(frames)
