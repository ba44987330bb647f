"""The action-video data: the procedural generator, the UCF101-layout loader and the split manifest.

Both sources end in the same layout (itself UCF101-style), which every later stage reads::

    data/har/
      manifest.json            {"classes": [...], "fps", "height", "width", "frames_per_clip",
                                "clips": [{"id", "split", "label", "class", "path", "frames"}, ...]}
      videos/<class>/<id>.mp4  H.264 clips

Every random draw of a synthetic clip comes from ``numpy.random.default_rng([seed, split, index])``,
so a clip depends only on the seed and its position, not on what else was generated.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from components.base import InputError
from components.har.config import DataConfig
from components.har.figures import SHIN, THIGH, sample_action, skeleton
from components.har.video import read_video, write_video
from components.io import read_json_record

SPLITS = ("train", "test")
VIDEO_EXTS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg")
_SS = 2  # supersampling factor of the renderer (anti-aliased, sub-pixel motion)


# --------------------------------------------------------------------------------------- render
def _background(rng: np.random.Generator, h: int, w: int, shapes: int) -> np.ndarray:
    """A cluttered static scene: smooth colour noise plus random rectangles, ellipses and lines."""
    import cv2

    base = rng.uniform(40, 215, size=3)
    noise = rng.normal(0, 1, size=(max(2, h // 16), max(2, w // 16), 3))
    bg = base + 28 * cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    bg = np.clip(bg, 0, 255).astype(np.uint8)
    for _ in range(shapes):
        colour = tuple(int(c) for c in rng.uniform(0, 255, size=3))
        x, y = int(rng.uniform(0, w)), int(rng.uniform(0, h))
        s = int(rng.uniform(0.04, 0.18) * min(h, w) * 2)
        kind = rng.integers(3)
        if kind == 0:
            cv2.rectangle(bg, (x, y), (x + s, y + int(s * rng.uniform(0.3, 1.5))), colour, -1)
        elif kind == 1:
            cv2.ellipse(bg, (x, y), (s // 2 + 1, int(s * rng.uniform(0.2, 0.6)) + 1),
                        float(rng.uniform(0, 180)), 0, 360, colour, -1)
        else:
            cv2.line(bg, (x, y), (x + int(rng.normal(0, s)), y + int(rng.normal(0, s))), colour,
                     int(rng.integers(1, 4)), cv2.LINE_AA)
    return bg


def render_clip(action: str, rng: np.random.Generator, cfg: DataConfig) -> np.ndarray:
    """Render one clip of ``action``: ``(frames_per_clip, H, W, 3)`` uint8 RGB."""
    import cv2

    H, W, T, fps = cfg.height, cfg.width, cfg.frames_per_clip, cfg.fps
    sample = sample_action(action, rng)
    h_fig = rng.uniform(0.62, 0.85) * H                 # figure height in pixels
    duration = T / fps
    # the canvas covers every camera position of the clip (pan + jitter) with a margin
    pan_px = abs(sample.camera_velocity) * h_fig * duration
    margin = int(math.ceil(pan_px / 2 + 4 * cfg.camera_jitter_px + 4))
    canvas = _background(rng, (H + 2 * margin) * _SS, (W + 2 * margin) * _SS, cfg.clutter_shapes)

    shirt = tuple(int(c) for c in rng.uniform(0, 255, size=3))
    trousers = tuple(int(c) for c in rng.uniform(0, 255, size=3))
    skin = tuple(int(c) for c in rng.uniform([120, 70, 40], [255, 210, 170]))
    outline = tuple(int(c) for c in rng.uniform(0, 40, size=3))
    thick = max(2, int(round(h_fig * _SS / 11)))         # limbs about h/11 wide (+ outline)
    # figure placement in canvas pixels: the trajectory's centre is uniform over the frame
    cx = margin + rng.uniform(0.35, 0.65) * W
    ground = margin + rng.uniform(0.88, 0.98) * H
    gain, bias = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
    noise_std = rng.uniform(*cfg.noise_std)
    jitter = np.cumsum(rng.normal(0, cfg.camera_jitter_px, size=(T, 2)), axis=0) * 0.5
    jitter -= jitter.mean(axis=0)
    frames = np.empty((T, H, W, 3), np.uint8)
    for t in range(T):
        ts = (t - (T - 1) / 2) / fps                       # time relative to the clip centre
        pose = sample.pose(ts + duration / 2)
        segs, head = skeleton(pose)
        fig_x = cx + sample.figure_velocity * h_fig * ts
        cam_x = margin + sample.camera_velocity * h_fig * ts + jitter[t, 0]
        cam_y = margin + jitter[t, 1]
        hip_y = ground - (THIGH + SHIN) * h_fig            # hip height of a standing figure

        def px(p: np.ndarray) -> tuple[int, int]:           # figure units -> canvas, 4 fractional bits
            x = (fig_x + p[0] * h_fig) * _SS
            y = (hip_y - p[1] * h_fig) * _SS
            return int(round(x * 16)), int(round(y * 16))

        img = canvas.copy()
        # a dark outline under every limb (the shading edge of a body): a luminance edge whatever
        # the colours, as the grey-level flow methods need
        for p, q in segs:
            cv2.line(img, px(p), px(q), outline, thick + 2 * _SS, cv2.LINE_AA, shift=4)
        cv2.circle(img, px(head), int(round((0.08 * h_fig + 1) * _SS * 16)), outline, -1, cv2.LINE_AA, shift=4)
        for i, (p, q) in enumerate(segs):
            colour = shirt if i < 5 else trousers
            cv2.line(img, px(p), px(q), colour, thick, cv2.LINE_AA, shift=4)
        cv2.circle(img, px(head), int(round(0.08 * h_fig * _SS * 16)), skin, -1, cv2.LINE_AA, shift=4)
        # camera: translate so that the window [cam, cam + W] lands on the frame, then downsample
        m = np.float32([[1, 0, -cam_x * _SS], [0, 1, -cam_y * _SS]])
        view = cv2.warpAffine(img, m, (W * _SS, H * _SS), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        small = cv2.resize(view, (W, H), interpolation=cv2.INTER_AREA).astype(np.float32)
        small = small * gain + bias + rng.normal(0, noise_std, size=small.shape)
        frames[t] = np.clip(small, 0, 255).astype(np.uint8)
    return frames


# --------------------------------------------------------------------------------------- dataset
def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), index])


def _plan(cfg: DataConfig) -> list[dict[str, Any]]:
    """Class-balanced clip list, interleaved by class."""
    plan = []
    for split in SPLITS:
        per_class = cfg.train_clips_per_class if split == "train" else cfg.test_clips_per_class
        for k in range(per_class):
            for label, name in enumerate(cfg.classes):
                i = k * len(cfg.classes) + label
                plan.append({"id": f"{split}_{i:05d}_{name}", "split": split, "label": label,
                             "class": name, "index": i})
    return plan


def generate_dataset(cfg: DataConfig, out: str | os.PathLike[str], seed: int,
                     progress: Callable[..., None] | None = None) -> list[dict[str, Any]]:
    """Render and write every synthetic clip under ``out``; write ``manifest.json``; return the clips."""
    out = Path(out)
    clips = []
    plan = _plan(cfg)
    for n, item in enumerate(plan):
        frames = render_clip(item["class"], clip_rng(seed, item["split"], item["index"]), cfg)
        rel = Path("videos") / item["class"] / f"{item['id']}.mp4"
        write_video(out / rel, frames, cfg.fps, cfg.crf)
        clips.append({"id": item["id"], "split": item["split"], "label": item["label"],
                      "class": item["class"], "path": rel.as_posix(), "frames": int(len(frames))})
        if progress and ((n + 1) % 24 == 0 or n + 1 == len(plan)):
            progress("har data: %d/%d clips rendered", n + 1, len(plan))
    write_manifest(out, cfg, clips, cfg.classes)
    return clips


def write_manifest(out: Path, cfg: DataConfig, clips: list[dict[str, Any]], classes: list[str]) -> None:
    manifest = {"classes": list(classes), "fps": cfg.fps, "height": cfg.height, "width": cfg.width,
                "frames_per_clip": cfg.frames_per_clip, "source": cfg.source, "clips": clips}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def load_manifest(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``<root>/manifest.json``: InputError naming the file, what was found and what is
    expected when it is missing, not a JSON object, lacks a key or has a malformed value or clip."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise InputError(f"{path}: manifest not found; run the har data stage first (python -m flows har data)")
    what = "a har manifest (the har data stage writes it: python -m flows har data)"
    manifest = read_json_record(path, ("classes", "clips", "fps", "height", "width"), what)

    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    classes = manifest["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise InputError(f"{path}: classes={repr(classes)[:80]}; expected a non-empty list of class names in {what}")
    for key in ("fps", "height", "width"):
        if not count(manifest[key]):
            raise InputError(f"{path}: {key}={repr(manifest[key])[:80]}; expected a positive integer in {what}")
    if manifest.get("frames_per_clip") is not None and not count(manifest["frames_per_clip"]):
        raise InputError(f"{path}: frames_per_clip={repr(manifest['frames_per_clip'])[:80]}; expected a positive "
                         f"integer or null in {what}")
    if not isinstance(manifest["clips"], list):
        raise InputError(f"{path}: clips={repr(manifest['clips'])[:80]}; expected a list of clips in {what}")
    for i, clip in enumerate(manifest["clips"]):
        ok = (isinstance(clip, dict) and all(k in clip for k in ("id", "split", "label", "path"))
              and isinstance(clip["id"], str) and isinstance(clip["path"], str) and clip["split"] in SPLITS
              and isinstance(clip["label"], int) and not isinstance(clip["label"], bool)
              and 0 <= clip["label"] < len(classes))
        if not ok:
            raise InputError(f"{path}: clips[{i}] = {repr(clip)[:200]}; expected an object with a string id, split "
                             f"in {list(SPLITS)}, an integer label in [0, {len(classes)}) and a string path")
    return manifest


def load_clip(root: str | os.PathLike[str], clip: dict[str, Any], manifest: dict[str, Any],
              min_frames: int) -> np.ndarray:
    """The frames of one manifest clip, checked against the manifest's frame size."""
    return read_video(Path(root) / clip["path"], size=(manifest["height"], manifest["width"]),
                      min_frames=min_frames, max_frames=manifest.get("frames_per_clip"))


# --------------------------------------------------------------------------------------- UCF101
_UCF_NAME = re.compile(r"^v_(?P<cls>.+)_g(?P<group>\d+)_c\d+$")


def scan_ucf101(root: str | os.PathLike[str], split: int = 1) -> tuple[list[str], list[dict[str, Any]]]:
    """Classes and clips of a dataset in UCF101 folder layout: ``<root>/<Class>/<video>``.

    The split comes from ``<root>/ucfTrainTestlist/testlist0<split>.txt`` when it exists; otherwise
    UCF101's convention is followed: videos named ``v_<Class>_gXX_cYY`` go to test when the group
    XX is in ``(split-1)*7+1 .. split*7`` (split 1: groups 1-7, 2: 8-14, 3: 15-21), and any other
    file goes to test for every third file of its class (sorted names; a different third per split).
    A clip's id is ``<Class>/<file stem>`` (unique across classes); two videos of one class with the
    same stem (``a.mp4``, ``a.avi``) are an InputError.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"data.ucf101_root={str(root)!r}: not a folder; expected <root>/<Class>/<video files>")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name != "ucfTrainTestlist")
    test_list: set[str] | None = None
    listfile = root / "ucfTrainTestlist" / f"testlist0{split}.txt"
    if listfile.is_file():
        test_list = {line.strip().replace("\\", "/") for line in listfile.read_text().splitlines() if line.strip()}
    clips: list[dict[str, Any]] = []
    seen: dict[str, Path] = {}
    test_groups = range((split - 1) * 7 + 1, split * 7 + 1)
    for label, cls in enumerate(classes):
        files = sorted(p for p in (root / cls).iterdir() if p.suffix.lower() in VIDEO_EXTS)
        for k, p in enumerate(files):
            rel, clip_id = f"{cls}/{p.name}", f"{cls}/{p.stem}"
            if clip_id in seen:
                raise InputError(f"data.ucf101_root={str(root)!r}: {seen[clip_id].name} and {p.name} in {cls}/ "
                                 f"have the same name; expected one video per name (clip id {clip_id!r})")
            seen[clip_id] = p
            if test_list is not None:
                split_name = "test" if rel in test_list else "train"
            else:
                m = _UCF_NAME.match(p.stem)
                split_name = ("test" if int(m.group("group")) in test_groups else "train") if m else \
                             ("test" if k % 3 == (split + 1) % 3 else "train")
            clips.append({"id": clip_id, "name": p.stem, "split": split_name, "label": label, "class": cls,
                          "source_path": str(p)})
    if len(classes) < 2 or not clips:
        raise InputError(f"data.ucf101_root={str(root)!r}: found {len(classes)} class folders and {len(clips)} "
                         f"videos ({', '.join(VIDEO_EXTS)}); expected at least 2 classes with videos")
    for split_name in SPLITS:
        if not any(c["split"] == split_name for c in clips):
            raise InputError(f"data.ucf101_root={str(root)!r}: no {split_name} videos after splitting; "
                             f"expected both splits (add ucfTrainTestlist/testlist0{split}.txt)")
    return classes, clips


def import_ucf101(cfg: DataConfig, out: str | os.PathLike[str], min_frames: int,
                  progress: Callable[..., None] | None = None,
                  scanned: tuple[list[str], list[dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """Resize (H, W) and trim (frames_per_clip) a UCF101-layout dataset into ``out``. ``scanned``: what
    :func:`scan_ucf101` found in ``cfg.ucf101_root`` (scanned here when None), so that a caller can check
    the dataset before it creates ``out``."""
    out = Path(out)
    classes, found = scanned if scanned is not None else scan_ucf101(cfg.ucf101_root or "", cfg.ucf101_split)
    clips = []
    for n, item in enumerate(found):
        frames = read_video(item["source_path"], size=(cfg.height, cfg.width), resize=True,
                            min_frames=min_frames, max_frames=cfg.frames_per_clip)
        usable = len(frames) - len(frames) % min_frames
        rel = Path("videos") / item["class"] / f"{item['name']}.mp4"
        write_video(out / rel, frames[:usable], cfg.fps, cfg.crf)
        clips.append({"id": item["id"], "split": item["split"], "label": item["label"],
                      "class": item["class"], "path": rel.as_posix(), "frames": int(usable)})
        if progress and ((n + 1) % 50 == 0 or n + 1 == len(found)):
            progress("har data: %d/%d videos imported", n + 1, len(found))
    write_manifest(out, cfg, clips, classes)
    return clips


def class_counts(clips: Iterable[dict[str, Any]], split: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in clips:
        if c["split"] == split:
            counts[c["class"]] = counts.get(c["class"], 0) + 1
    return counts
