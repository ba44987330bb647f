"""The real-time runtime: frames arrive at a fixed rate, a prediction comes out every chunk.

``run_stream`` models a camera: frame i arrives at ``t0 + i / fps`` into a bounded queue (a frame
that finds the queue full pushes the oldest one out: a *drop*). The consumer takes frames in order
and hands each to the pipeline; the **latency** of a frame is its completion time minus its arrival
time (queueing included), a **deadline miss** is a latency above ``deadline_ms`` (default one frame
period), **missed or dropped** counts the frames that did not make it in time (deadline misses +
drops, its rate over the frames that arrived), the **achieved fps** (sustained throughput) is
processed frames over the time from the first arrival until the later of (a) the end of the camera
time the arrived frames cover (last arrival + one frame period: N frames span N periods) and (b) the
completion of the last processed frame: exactly ``fps`` for a pipeline that processes every frame
and finishes each before the next one is due, ``fps * (1 - drop_rate)`` when frames are dropped, and
less where a backlog is still being worked off after the camera's last period. The **capacity fps**
is processed frames over the time spent processing (the pipeline alone); **capacity fps with
source** adds the time spent getting the frames from the source (``source_ms_mean`` per frame:
decoding, for a video file), since the runtime decodes on the same thread.

Only one frame in ``clip_len`` completes a chunk and runs the models; the others are buffered in
microseconds. So ``latency_ms_p50`` describes the cheap frames and ``latency_ms_p99`` is about the
slowest chunk; ``prediction_latency_ms_p50`` / ``_p99`` are over the frames that produced a
prediction only (``predictions`` of them).

**Decoding.** While the pipeline waits for the next frame it fetches that frame from the source
(a camera delivers frames already captured); frames that are overdue when the pipeline comes back
are fetched then, and their decoding counts in their latency. A source that ends is noticed while
waiting, so the run stops at its last frame's completion, not one frame period later.

``HarPipeline`` keeps the window: it buffers ``clip_len`` frames, then computes the chunk's RGB
feature (centre frame) and motion feature (IMFE on the 6 frames, or TV-L1/Farnebäck/DIS flow +
flow CNN), appends them to the long/short memory and runs the LSTR head: one prediction per step.

The clock is injectable (``WallClock`` for real runs, ``SimClock`` for tests), so the accounting
can be checked deterministically.

**Warm-up.** A freshly loaded pipeline's first chunk is slow (0.4-0.9 s for IMFE at 48 px, against
~2 ms warm), which would show up as dropped frames at the start of every stream. Almost all of it is
one Python import: torch 2.13's attention with a padding mask (the LSTR head) imports
``torch.fx.experimental.symbolic_shapes``, and with it sympy, on its first call; the models' own
first runs (RGB CNN, IMFE in onnxruntime) cost 5-12 ms each (``benchmarks/har/warmup_cost.py``). ``HarPipeline.warm_up`` runs a few chunks of blank
frames through the whole pipeline and then clears its window, as a deployed recogniser does before
the camera starts; the CLI and the evaluate stage call it before timing and report its cost
(``warmup_ms``: the first, cold chunk). ``--no-warmup`` measures the cold start instead.

CLI (a video file, or clips rendered by the generator)::

    python -m components.har.stream --video clip.mp4 --fps 30 --models models/har --source imfe
    python -m components.har.stream --generate 4 --fps 30 --source tvl1 --json out.json
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np

from components.base import ConfigError, InputError

#: the most clips ``--generate`` renders (all held in memory: ~0.2 MB per 30-frame clip at 48x48)
MAX_GENERATE = 1000


# ------------------------------------------------------------------------------------ clocks
class Clock(Protocol):
    def now(self) -> float: ...
    def sleep_until(self, t: float) -> None: ...


class WallClock:
    def now(self) -> float:
        return time.perf_counter()

    def sleep_until(self, t: float) -> None:
        dt = t - time.perf_counter()
        if dt > 0:
            time.sleep(dt)


class SimClock:
    """A manual clock: ``advance(dt)`` stands for ``dt`` seconds of work (for tests)."""

    def __init__(self, start: float = 0.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def sleep_until(self, t: float) -> None:
        self.t = max(self.t, t)

    def advance(self, dt: float) -> None:
        self.t += dt


# ------------------------------------------------------------------------------------ accounting
@dataclass
class StreamReport:
    fps: float
    deadline_ms: float
    frames_in: int = 0
    frames_processed: int = 0
    frames_dropped: int = 0
    deadline_misses: int = 0
    missed_or_dropped: int = 0
    predictions: int = 0
    latency_ms_p50: float = 0.0
    latency_ms_p99: float = 0.0
    latency_ms_max: float = 0.0
    prediction_latency_ms_p50: float | None = None
    prediction_latency_ms_p99: float | None = None
    achieved_fps: float = 0.0
    capacity_fps: float = 0.0
    capacity_fps_with_source: float = 0.0
    source_ms_mean: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    prediction_latencies_ms: list[float] = field(default_factory=list, repr=False)
    labels: list[int] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("latencies_ms")
        d.pop("prediction_latencies_ms")
        d.pop("labels")
        d["deadline_miss_rate"] = self.deadline_misses / max(1, self.frames_processed)
        d["drop_rate"] = self.frames_dropped / max(1, self.frames_in)
        d["missed_or_dropped_rate"] = self.missed_or_dropped / max(1, self.frames_in)
        return d


def run_stream(frames: Iterable[np.ndarray], step: Callable[[np.ndarray], Any], fps: float,
               clock: Clock | None = None, deadline_ms: float | None = None, queue_size: int = 2,
               max_frames: int | None = None) -> StreamReport:
    """Push ``frames`` through ``step`` as a camera at ``fps`` would; see the module docstring."""
    if not (math.isfinite(fps) and fps > 0):
        raise ConfigError(f"fps={fps}; expected a positive, finite frame rate")
    if queue_size < 1:
        raise ConfigError(f"queue_size={queue_size}; expected at least 1")
    if deadline_ms is not None and not (math.isfinite(deadline_ms) and deadline_ms > 0):
        raise ConfigError(f"deadline_ms={deadline_ms}; expected a positive, finite deadline in ms")
    if max_frames is not None and max_frames < 1:
        raise ConfigError(f"max_frames={max_frames}; expected at least 1 frame")
    clock = clock or WallClock()
    period = 1.0 / fps
    deadline = (deadline_ms if deadline_ms is not None else 1000.0 * period) / 1000.0
    rep = StreamReport(fps=fps, deadline_ms=deadline * 1000.0)
    source: Iterator[np.ndarray] = iter(frames)
    queue: collections.deque[tuple[float, np.ndarray]] = collections.deque()
    exhausted, next_idx, busy, last_done, fetch_s, fetched = False, 0, 0.0, 0.0, 0.0, 0
    pending: list[np.ndarray] = []     # frame next_idx, fetched ahead while the pipeline waited for it
    t0 = clock.now()

    def fetch() -> bool:
        """Get frame ``next_idx`` from the source into ``pending`` (timed); False when the source ended."""
        nonlocal exhausted, fetch_s, fetched
        if pending:
            return True
        if max_frames is not None and next_idx >= max_frames:
            exhausted = True
            return False
        start = clock.now()
        try:
            frame = next(source)
        except StopIteration:       # not timed: the decoder's flush and close are no frame's cost
            exhausted = True
            return False
        fetch_s += clock.now() - start
        fetched += 1
        pending.append(frame)
        return True

    def arrive_until(now: float) -> None:
        nonlocal exhausted, next_idx
        while not exhausted and t0 + next_idx * period <= now + 1e-12:
            if not fetch():
                return
            frame = pending.pop()
            queue.append((t0 + next_idx * period, frame))
            next_idx += 1
            rep.frames_in += 1
            if len(queue) > queue_size:   # the camera's ring buffer overwrites the oldest frame
                queue.popleft()
                rep.frames_dropped += 1
            if max_frames is not None and next_idx >= max_frames:
                exhausted = True          # the last frame: no wait for an arrival that never comes

    while True:
        arrive_until(clock.now())
        if not queue:
            if exhausted or not fetch():    # fetch the next frame while waiting for it: a source that
                break                       # ended stops the run now, not a frame period later
            clock.sleep_until(t0 + next_idx * period)
            continue
        arrival, frame = queue.popleft()
        start = clock.now()
        out = step(frame)
        done = clock.now()
        busy += done - start
        last_done = done
        latency = done - arrival
        rep.latencies_ms.append(1000.0 * latency)
        rep.frames_processed += 1
        rep.deadline_misses += int(latency > deadline + 1e-12)
        if out is not None:
            rep.predictions += 1
            rep.labels.append(int(out))
            rep.prediction_latencies_ms.append(1000.0 * latency)
    rep.missed_or_dropped = rep.deadline_misses + rep.frames_dropped
    if rep.latencies_ms:
        lat = np.asarray(rep.latencies_ms)
        rep.latency_ms_p50 = float(np.percentile(lat, 50))
        rep.latency_ms_p99 = float(np.percentile(lat, 99))
        rep.latency_ms_max = float(lat.max())
        # processed frames / max(camera span, time to the last completion): the arrivals are t0 + i * period,
        # i = 0..frames_in-1, so the camera span is frames_in periods (written so that a pipeline that keeps
        # up reports fps exactly, not up to an ulp off); a backlog past it lowers the figure
        camera_span = rep.frames_in * period
        if last_done - t0 <= camera_span + 1e-12:
            rep.achieved_fps = fps * (rep.frames_processed / rep.frames_in)
        else:
            rep.achieved_fps = rep.frames_processed / (last_done - t0)
        rep.capacity_fps = rep.frames_processed / busy if busy > 0 else float("inf")
        rep.source_ms_mean = 1000.0 * fetch_s / fetched if fetched else 0.0
        # the processed frames' share of the fetching (dropped frames were fetched too)
        work = busy + fetch_s * rep.frames_processed / max(1, fetched)
        rep.capacity_fps_with_source = rep.frames_processed / work if work > 0 else float("inf")
    if rep.prediction_latencies_ms:
        pred = np.asarray(rep.prediction_latencies_ms)
        rep.prediction_latency_ms_p50 = float(np.percentile(pred, 50))
        rep.prediction_latency_ms_p99 = float(np.percentile(pred, 99))
    return rep


# ------------------------------------------------------------------------------------ pipeline
class HarPipeline:
    """Per-frame step of the online recogniser: window of chunks -> one prediction per chunk.

    ``motion(chunk)`` maps a (clip_len, H, W, 3) uint8 chunk to its motion feature (or None for the
    RGB-only pipeline); ``rgb(frame)`` maps the centre frame to its RGB feature; ``head(window,
    valid)`` maps (window, D) features to the predicted class.
    """

    def __init__(self, clip_len: int, window: int, size: tuple[int, int],
                 rgb: Callable[[np.ndarray], np.ndarray], motion: Callable[[np.ndarray], np.ndarray] | None,
                 head: Callable[[np.ndarray, np.ndarray], int]) -> None:
        self.clip_len, self.window, self.size = clip_len, window, tuple(size)
        self.rgb, self.motion, self.head = rgb, motion, head
        self.buffer: list[np.ndarray] = []
        self.memory: collections.deque[np.ndarray] = collections.deque(maxlen=window)

    def reset(self) -> None:
        """Forget the buffered frames and the feature memory (a new stream starts)."""
        self.buffer.clear()
        self.memory.clear()

    def warm_up(self, chunks: int = 2) -> float:
        """Run ``chunks`` chunks of blank frames through every model, then ``reset``; returns the wall
        time of the first (cold) chunk in ms. Nothing of the warm-up reaches a later prediction."""
        if chunks < 1:
            raise ConfigError(f"warm-up chunks={chunks}; expected at least 1")
        blank = np.zeros((*self.size, 3), np.uint8)
        first_ms = 0.0
        for i in range(chunks):
            t = time.perf_counter()
            for _ in range(self.clip_len):
                self(blank)
            if i == 0:
                first_ms = 1000.0 * (time.perf_counter() - t)
        self.reset()
        return first_ms

    def __call__(self, frame: np.ndarray) -> int | None:
        if frame.shape[:2] != self.size or frame.ndim != 3:
            raise InputError(f"frame of shape {frame.shape}; expected {self.size[0]}x{self.size[1]}x3 "
                             f"(the resolution the models were trained at)")
        self.buffer.append(frame)
        if len(self.buffer) < self.clip_len:
            return None
        chunk = np.stack(self.buffer)
        self.buffer.clear()
        feat = self.rgb(chunk[self.clip_len // 2])
        if self.motion is not None:
            feat = np.concatenate([feat, self.motion(chunk)])
        self.memory.append(feat.astype(np.float32))
        n = len(self.memory)
        x = np.zeros((self.window, len(feat)), np.float32)
        valid = np.zeros(self.window, bool)
        x[self.window - n:] = np.stack(self.memory)
        valid[self.window - n:] = True
        return int(self.head(x, valid))


# ------------------------------------------------------------------------------------ models
def load_pipeline(models: str | Path, source: str, backend: str = "onnx", threads: int = 1,
                  heads: str | Path | None = None) -> tuple[HarPipeline, dict]:
    """Build the pipeline of ``source`` from the saved models (``models/har`` of the DVC stages;
    the head from ``heads``, default ``models/heads``).

    ``threads`` is the CPU thread count of every library the pipeline runs: torch, onnxruntime and
    OpenCV (the classical flow), set here for the whole process."""
    import cv2
    import torch

    from components.har.chunks import flow_tensor, rgb_tensor
    from components.har.config import OpticalFlowConfig, TemporalConfig
    from components.har.experiment import load_bundle, load_imfe, load_stream_net
    from components.har.opticalflow import FLOW_METHODS, chunk_flow, make_flow_fn, to_gray
    from components.har.temporal import LstrHead

    if threads < 1:
        raise ConfigError(f"--threads {threads}; expected at least 1")
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    models = Path(models)
    sources = ("imfe", "rgb", *FLOW_METHODS)
    if source not in sources:
        raise ConfigError(f"--source {source!r}; expected one of {list(sources)}")
    if backend not in ("onnx", "torch"):
        raise ConfigError(f"--backend {backend!r}; expected 'onnx' or 'torch'")

    def stream_net(name: str):
        return load_stream_net(models / "teacher" / f"{name}.pt")

    hb = load_bundle(Path(heads if heads is not None else models / "heads") / f"{source}.pt")
    meta = hb["meta"]
    head = LstrHead(hb["in_dim"], len(meta["classes"]), TemporalConfig(**hb["config"]))
    head.load_state_dict(hb["state_dict"])
    head.eval()
    rgb_net = stream_net("rgb")

    @torch.no_grad()
    def rgb(frame: np.ndarray) -> np.ndarray:
        return rgb_net.features(rgb_tensor(frame[None]))[0].numpy()

    motion = None
    if source == "imfe":
        if backend == "onnx":
            from components.har.imfe import onnx_session

            sess = onnx_session(models / "imfe" / "imfe.onnx", threads)

            def motion(chunk: np.ndarray) -> np.ndarray:
                return sess.run(["motion_feature"], {"frames": rgb_tensor(chunk[None]).numpy()})[0][0]
        else:
            net = load_imfe(models / "imfe" / "imfe.pt")

            @torch.no_grad()
            def motion(chunk: np.ndarray) -> np.ndarray:
                return net(rgb_tensor(chunk[None]))[0].numpy()
    elif source in FLOW_METHODS:
        flow_net = stream_net(source)
        fcfg = OpticalFlowConfig(**meta["opticalflow"])
        fn = make_flow_fn(source, fcfg)

        @torch.no_grad()
        def motion(chunk: np.ndarray) -> np.ndarray:
            q = chunk_flow(to_gray(chunk), fn, fcfg.bound)
            return flow_net.features(flow_tensor(q[None]))[0].numpy()

    @torch.no_grad()
    def classify(x: np.ndarray, valid: np.ndarray) -> int:
        return int(head(torch.from_numpy(x[None]), torch.from_numpy(valid[None]))[0, -1].argmax())

    pipe = HarPipeline(meta["clip_len"], head.window, (meta["height"], meta["width"]), rgb, motion, classify)
    return pipe, meta


def synthetic_frames(n_clips: int, seed: int, meta: dict) -> tuple[np.ndarray, list[int]]:
    """A stream of ``n_clips`` generator clips back to back (at the models' resolution). A
    ConfigError when the models were not trained on generator clips (e.g. UCF101 classes)."""
    from pydantic import ValidationError

    from components.har.config import DataConfig
    from components.har.data import render_clip
    from components.har.figures import ACTIONS

    unknown = [c for c in meta["classes"] if c not in ACTIONS]
    if unknown:
        raise ConfigError(f"--generate renders the synthetic generator's actions {list(ACTIONS)}, but the models "
                          f"were trained on other classes ({unknown[:3]}...); stream a video with --video instead")
    try:
        cfg = DataConfig(height=meta["height"], width=meta["width"], fps=meta.get("fps") or 30,
                         frames_per_clip=meta.get("frames_per_clip") or 30, classes=meta["classes"])
    except ValidationError as err:
        raise ConfigError(f"--generate cannot render clips for these models ({err.errors()[0]['msg']}); "
                          f"stream a video with --video instead") from None
    rng = np.random.default_rng([seed, 99])
    frames, labels = [], []
    for _ in range(n_clips):
        label = int(rng.integers(len(cfg.classes)))
        clip = render_clip(cfg.classes[label], rng, cfg)
        chunks = len(clip) // meta["clip_len"]     # whole chunks only: a remainder would shift every later
        frames.append(clip[:chunks * meta["clip_len"]])    # chunk across clip boundaries and its label
        labels += [label] * chunks
    return np.concatenate(frames), labels


def _json_path_problem(path: str) -> str | None:
    """Why ``--json path`` cannot take the report (checked before the run, which takes minutes), or None:
    ``path`` must not be a folder, and the nearest of its folders that exists must be a folder (the
    missing ones are created when the report is written)."""
    p = Path(path)
    if p.is_dir() or path.endswith("/"):
        return f"--json {path}: a folder; expected the path of a file to write the report to"
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                return (f"--json {path}: {parent} is a file, not a folder; expected the path of a file in a "
                        f"folder (missing folders are created)")
            if not os.access(parent, os.W_OK | os.X_OK):
                return f"--json {path}: folder {parent} is not writable; expected a path where the report can be written"
            return None
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m components.har.stream",
                                description="Real-time action recognition on a video stream (RT-HARE runtime).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", help="video file to stream (decoded frame by frame)")
    src.add_argument("--generate", type=int, metavar="N",
                     help=f"stream N clips rendered by the generator (1 to {MAX_GENERATE}; held in memory)")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate the frames arrive at, 0.1 to 1000 (default 30)")
    p.add_argument("--models", default="models/har", help="models folder written by the har stages")
    p.add_argument("--source", default="imfe", help="motion source: imfe, tvl1, farneback, dis or rgb")
    p.add_argument("--backend", default="onnx", choices=["onnx", "torch"], help="IMFE runtime (default onnx)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for inference (default 1)")
    p.add_argument("--deadline-ms", type=float, default=None, help="per-frame deadline (default 1000/fps)")
    p.add_argument("--queue", type=int, default=2, help="frames the camera buffer holds before dropping")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--resize", action="store_true", help="rescale frames of another size instead of failing")
    p.add_argument("--seed", type=int, default=0, help="seed of --generate")
    p.add_argument("--json", default=None, help="write the report (and predictions) to this file")
    p.add_argument("--no-warmup", action="store_true",
                   help="time the cold start too (default: 2 blank chunks through the pipeline first, not counted)")
    args = p.parse_args(argv)
    from components.har.config import STREAM_FPS_MAX, STREAM_FPS_MIN

    bad = [f"--fps {args.fps}: expected a positive, finite frame rate from {STREAM_FPS_MIN:g} to "
           f"{STREAM_FPS_MAX:g} frames per second" if not STREAM_FPS_MIN <= args.fps <= STREAM_FPS_MAX else None,
           f"--deadline-ms {args.deadline_ms}: expected a positive, finite deadline" if args.deadline_ms is not None
           and not (math.isfinite(args.deadline_ms) and args.deadline_ms > 0) else None,
           f"--queue {args.queue}: expected at least 1 frame" if args.queue < 1 else None,
           f"--max-frames {args.max_frames}: expected at least 1" if args.max_frames is not None and args.max_frames < 1
           else None,
           f"--generate {args.generate}: expected 1 to {MAX_GENERATE} clips (they are rendered into memory)"
           if args.generate is not None and not 1 <= args.generate <= MAX_GENERATE else None,
           f"--seed {args.seed}: expected a non-negative integer" if args.seed < 0 else None,
           f"--video {args.video}: file not found" if args.video is not None and not Path(args.video).is_file()
           else None,
           _json_path_problem(args.json) if args.json is not None else None]
    if any(bad):
        print("error: " + "; ".join(b for b in bad if b), file=sys.stderr)
        return 2
    try:
        pipe, meta = load_pipeline(args.models, args.source, args.backend, args.threads)
        if args.max_frames is not None and args.max_frames < pipe.clip_len:
            raise ConfigError(f"--max-frames {args.max_frames}: fewer frames than one chunk; expected at least "
                              f"{pipe.clip_len} (the models' clip_len), or no limit")
        truth = None
        if args.video:
            from components.har.video import iter_frames, read_video

            # fail early (before timing) on a missing/unreadable file, wrong size or a too-short clip
            read_video(args.video, size=None if args.resize else pipe.size, min_frames=pipe.clip_len,
                       max_frames=pipe.clip_len, resize=args.resize)
            frames: Iterable[np.ndarray] = iter_frames(args.video, pipe.size, resize=args.resize)
        else:
            arr, truth = synthetic_frames(args.generate, args.seed, meta)
            frames = list(arr)
        warmup_ms = None if args.no_warmup else pipe.warm_up()
        # closing(): the video's decoder is released when the run ends, also on --max-frames or an error
        with contextlib.closing(frames) if hasattr(frames, "close") else contextlib.nullcontext():
            rep = run_stream(frames, pipe, args.fps, deadline_ms=args.deadline_ms, queue_size=args.queue,
                             max_frames=args.max_frames)
    except (ConfigError, InputError) as err:
        # the reader's hint names its keyword argument; on the command line it is the --resize flag, and
        # the reader's "video PATH: ..." is the --video flag's value
        msg = str(err).replace("(pass resize to rescale)", "(pass --resize to rescale)")
        if args.video and msg.startswith(f"video {args.video}:"):
            msg = "--" + msg
        print(f"error: {msg}", file=sys.stderr)
        return 2
    out = rep.summary()
    out["source"], out["backend"], out["warmup_ms"] = args.source, args.backend, warmup_ms
    out["predicted"] = [meta["classes"][i] for i in rep.labels]
    if truth is not None and rep.frames_dropped == 0 and rep.labels:
        hits = sum(int(a == b) for a, b in zip(rep.labels, truth))
        out["online_accuracy"] = hits / len(rep.labels)
    text = {k: v for k, v in out.items() if k != "predicted"}
    print(json.dumps(text, indent=1))
    print("predictions:", " ".join(out["predicted"]))
    if args.json:
        from components.io import atomic_file

        with atomic_file(args.json) as fh:              # parents created; no partial file on failure
            fh.write(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
