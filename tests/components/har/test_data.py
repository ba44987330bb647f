"""The procedural action-video generator and the data loaders."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from components.base import InputError
from components.har.config import DataConfig
from components.har.data import (clip_rng, class_counts, generate_dataset, import_ucf101, load_clip,
                                 load_manifest, render_clip, scan_ucf101)
from components.har.figures import ACTIONS, MIRROR
from components.har.video import read_video, write_video

SMALL = DataConfig(height=32, width=32, frames_per_clip=12, train_clips_per_class=2, test_clips_per_class=1)


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_generator_is_deterministic_by_seed(tmp_path):
    a = generate_dataset(SMALL, tmp_path / "a", seed=3)
    b = generate_dataset(SMALL, tmp_path / "b", seed=3)
    c = render_clip("wave", clip_rng(4, "train", 0), SMALL)
    assert a == b
    assert (tmp_path / "a" / "manifest.json").read_text() == (tmp_path / "b" / "manifest.json").read_text()
    for clip in a:   # the video files are byte-identical (single-threaded x264)
        assert _digest(tmp_path / "a" / clip["path"]) == _digest(tmp_path / "b" / clip["path"])
    same = render_clip("wave", clip_rng(3, "train", 0), SMALL)
    assert np.array_equal(same, render_clip("wave", clip_rng(3, "train", 0), SMALL))
    assert not np.array_equal(same, c)          # another seed, another clip


def test_classes_are_balanced_and_splits_disjoint(tmp_path):
    clips = generate_dataset(SMALL, tmp_path, seed=0)
    assert class_counts(clips, "train") == {c: 2 for c in ACTIONS}
    assert class_counts(clips, "test") == {c: 1 for c in ACTIONS}
    assert len({c["id"] for c in clips}) == len(clips)
    manifest = load_manifest(tmp_path)
    assert manifest["classes"] == list(ACTIONS) and len(manifest["clips"]) == 3 * len(ACTIONS)


def test_written_clips_decode_to_the_rendered_frames(tmp_path):
    clips = generate_dataset(SMALL, tmp_path, seed=1)
    manifest = load_manifest(tmp_path)
    frames = load_clip(tmp_path, clips[0], manifest, min_frames=6)
    ref = render_clip(clips[0]["class"], clip_rng(1, "train", 0), SMALL)
    assert frames.shape == ref.shape == (12, 32, 32, 3)
    assert np.abs(frames.astype(float) - ref).mean() < 8     # H.264 at crf 17 smooths the pixel noise


def test_mirror_pairs_share_single_frame_appearance():
    """walk_left/right and arm_circle_cw/ccw differ only in motion: the pose at a random instant of
    one class has the same distribution as of its mirror class (here: the mean figure extent)."""
    from components.har.figures import sample_action, skeleton

    def extents(name):
        rng = np.random.default_rng(0)
        out = []
        for _ in range(300):
            pose = sample_action(name, rng).pose(rng.uniform(0, 1))
            segs, _ = skeleton(pose)
            xs = np.array([p[0] for s in segs for p in s])
            out.append(xs.max() - xs.min())
        return np.mean(out)

    for a in ("walk_left", "arm_circle_cw"):
        assert abs(extents(a) - extents(MIRROR[a])) < 0.02


def test_bad_video_inputs_are_named(tmp_path):
    with pytest.raises(InputError, match="missing.mp4: file not found"):
        read_video(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    with pytest.raises(InputError, match="cannot be read as a video"):
        read_video(junk)
    path = write_video(tmp_path / "v.mp4", np.zeros((8, 32, 32, 3), np.uint8), fps=30)
    with pytest.raises(InputError, match=r"frame size 32x32 .*expected 48x48"):
        read_video(path, size=(48, 48))
    with pytest.raises(InputError, match="8 frames; expected at least 12"):
        read_video(path, min_frames=12)
    with pytest.raises(InputError, match="manifest not found"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"classes": ["a"], "clips": [{"id": 1}], "fps": 30,
                                                        "height": 32, "width": 32}))
    with pytest.raises(InputError, match=r"clips\[0\]"):
        load_manifest(tmp_path)


def test_ucf101_layout_loader(tmp_path):
    root = tmp_path / "ucf"
    rng = np.random.default_rng(0)
    # smooth, orientation-revealing frames (bright top-left, dark bottom-right, moving a little per
    # frame) that H.264 keeps nearly intact, so pixels can be compared after each re-encode
    yy, xx = np.mgrid[0:40, 0:56]
    for cls in ("ApplyEyeMakeup", "Basketball"):
        for g in (1, 8):
            base = rng.integers(0, 40, 3)
            frames = np.stack([np.stack([230 - 4 * yy - t, 200 - 3 * xx + 2 * t, 60 + 4 * yy - 2 * xx + t], -1) + base
                               for t in range(14)]).clip(0, 255).astype(np.uint8)
            write_video(root / cls / f"v_{cls}_g{g:02d}_c01.mp4", frames, fps=25)
    classes, clips = scan_ucf101(root)
    assert classes == ["ApplyEyeMakeup", "Basketball"]
    assert {c["split"] for c in clips if "_g01_" in c["id"]} == {"test"}     # UCF101: groups 1-7 test
    assert {c["split"] for c in clips if "_g08_" in c["id"]} == {"train"}
    cfg = DataConfig(source="ucf101", ucf101_root=str(root), height=32, width=32, frames_per_clip=12)
    out = import_ucf101(cfg, tmp_path / "out", min_frames=6)
    manifest = load_manifest(tmp_path / "out")
    assert len(out) == 4 and manifest["classes"] == classes
    loaded = load_clip(tmp_path / "out", out[0], manifest, 6)
    assert loaded.shape == (12, 32, 32, 3)   # resized, trimmed
    # resized pixel by pixel as cv2.resize (INTER_AREA) does: exactly on decoding, and after the
    # import's re-encode within codec error (a flipped or mirrored frame is off by tens of levels)
    import cv2

    source = read_video(root / f"{out[0]['id']}.mp4")
    expected = np.stack([cv2.resize(f, (32, 32), interpolation=cv2.INTER_AREA) for f in source])
    assert np.array_equal(read_video(root / f"{out[0]['id']}.mp4", size=(32, 32), resize=True), expected)
    err = np.abs(loaded.astype(float) - expected[:12])
    assert err.mean() < 5 and err.max() < 40                     # measured: 2.0 and 13
    assert np.abs(loaded.astype(float) - expected[:12, ::-1]).mean() > 25    # measured: 53
    assert np.abs(loaded.astype(float) - expected[:12, :, ::-1]).mean() > 25  # measured: 47
    # the official split files win when present
    (root / "ucfTrainTestlist").mkdir()
    (root / "ucfTrainTestlist" / "testlist01.txt").write_text("Basketball/v_Basketball_g08_c01.mp4\n")
    _, clips = scan_ucf101(root)
    assert [c["id"] for c in clips if c["split"] == "test"] == ["Basketball/v_Basketball_g08_c01"]
    with pytest.raises(InputError, match="not a folder"):
        scan_ucf101(tmp_path / "nowhere")


def test_ucf101_splits_2_and_3_without_list_files_use_their_own_groups(tmp_path):
    root = tmp_path / "ucf"
    for cls in ("A", "B"):
        for g in (7, 8, 14, 15, 21):
            (root / cls).mkdir(parents=True, exist_ok=True)
            (root / cls / f"v_{cls}_g{g:02d}_c01.mp4").write_bytes(b"")
    for split, groups in ((1, {7}), (2, {8, 14}), (3, {15, 21})):
        _, clips = scan_ucf101(root, split)
        assert {int(c["name"][-6:-4]) for c in clips if c["split"] == "test"} == groups


def test_ucf101_clip_ids_are_unique_across_classes(tmp_path):
    """ClassA/clip1 and ClassB/clip1 must not share an id (flows are looked up by id)."""
    root = tmp_path / "ucf"
    rng = np.random.default_rng(0)
    for cls in ("ClassA", "ClassB"):
        for name in ("clip1", "clip2", "clip3"):
            write_video(root / cls / f"{name}.mp4", rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8), fps=25)
    _, clips = scan_ucf101(root)
    ids = [c["id"] for c in clips]
    assert len(set(ids)) == len(ids) == 6 and "ClassB/clip1" in ids
    cfg = DataConfig(source="ucf101", ucf101_root=str(root), height=32, width=32, frames_per_clip=12)
    out = import_ucf101(cfg, tmp_path / "out", min_frames=6)
    assert {c["path"] for c in out} >= {"videos/ClassA/clip1.mp4", "videos/ClassB/clip1.mp4"}
    (root / "ClassA" / "clip1.avi").write_bytes(b"")
    with pytest.raises(InputError, match="clip1.avi and clip1.mp4 in ClassA/ have the same name"):
        scan_ucf101(root)


def test_distillation_set_is_disjoint_from_the_har_clips_and_deterministic():
    from components.har.config import HarConfig
    from components.har.experiment import render_distill_set

    cfg = HarConfig(data={"height": 32, "width": 32, "frames_per_clip": 12, "classes": ["walk_left", "wave"]},
                    opticalflow={"workers": 1})
    frames, flows, labels = render_distill_set(cfg, 2)
    assert frames.shape == (2 * 2 * 2, 6, 32, 32, 3) and frames.dtype == np.uint8   # 2 clips x 2 classes x 2 chunks
    assert flows.shape == (8, 10, 32, 32) and flows.dtype == np.uint8
    assert labels.tolist() == [0, 0, 1, 1, 0, 0, 1, 1]                                # interleaved by class
    again, _, _ = render_distill_set(cfg, 1)
    assert np.array_equal(again, frames[:4])                                           # nested, deterministic
    # stream 2 is not a data-stage clip; stream 1 re-renders exactly the test split's clip i
    har_train = render_clip("walk_left", clip_rng(cfg.seed, "train", 0), cfg.data)
    har_test = render_clip("wave", clip_rng(cfg.seed, "test", 1), cfg.data)
    assert not np.array_equal(frames[:2].reshape(har_train.shape), har_train)
    test_frames, _, test_labels = render_distill_set(cfg, 1, stream=1)
    assert np.array_equal(test_frames[2:4].reshape(har_test.shape), har_test) and test_labels[2] == 1
