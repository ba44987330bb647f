"""The real-time runtime's accounting, on a synthetic clock."""
from __future__ import annotations

import numpy as np
import pytest

from components.base import ConfigError, InputError
from components.har.stream import HarPipeline, SimClock, main, run_stream
from tests.components.har.conftest import tiny_rgb_models


def _costed(clock: SimClock, costs):
    """A step that 'works' costs[i] seconds on the i-th frame it processes and returns i."""
    seen = []

    def step(frame):
        clock.advance(costs[len(seen)] if len(seen) < len(costs) else costs[-1])
        seen.append(int(frame[0, 0, 0]))
        return None
    return step, seen


def _frames(n):
    return [np.full((4, 4, 3), i, np.uint8) for i in range(n)]


def test_fast_pipeline_keeps_up():
    clock = SimClock()
    step, seen = _costed(clock, [0.01])
    rep = run_stream(_frames(20), step, fps=10, clock=clock)
    assert seen == list(range(20))
    assert rep.frames_processed == 20 and rep.frames_dropped == 0 and rep.deadline_misses == 0
    assert rep.latency_ms_p50 == pytest.approx(10.0) and rep.latency_ms_p99 == pytest.approx(10.0)
    assert rep.achieved_fps == pytest.approx(20 / 2.01)         # last frame done at 1.9 s + 10 ms, + 1 period
    assert rep.missed_or_dropped == 0 and rep.summary()["missed_or_dropped_rate"] == 0
    assert rep.capacity_fps == pytest.approx(100.0)


def test_a_slow_frame_queues_the_next_ones():
    # frame 0 takes 250 ms at 10 fps: frames 1 and 2 wait in the queue (160 and 70 ms latency)
    clock = SimClock()
    step, seen = _costed(clock, [0.25, 0.01])
    rep = run_stream(_frames(6), step, fps=10, clock=clock, queue_size=2)
    assert seen == [0, 1, 2, 3, 4, 5]
    assert rep.latencies_ms == pytest.approx([250, 160, 70, 10, 10, 10])
    assert rep.deadline_misses == 2 and rep.frames_dropped == 0
    assert rep.achieved_fps == pytest.approx(6 / 0.61)
    assert rep.missed_or_dropped == 2


def test_a_full_buffer_drops_the_oldest_frame():
    clock = SimClock()
    step, seen = _costed(clock, [0.25, 0.01])
    rep = run_stream(_frames(6), step, fps=10, clock=clock, queue_size=1)
    assert seen == [0, 2, 3, 4, 5]                      # frame 1 was overwritten while frame 0 ran
    assert rep.frames_in == 6 and rep.frames_dropped == 1 and rep.frames_processed == 5
    assert rep.latencies_ms == pytest.approx([250, 60, 10, 10, 10])
    assert rep.deadline_misses == 1
    assert rep.summary()["drop_rate"] == pytest.approx(1 / 6)
    assert rep.missed_or_dropped == 2 and rep.summary()["missed_or_dropped_rate"] == pytest.approx(2 / 6)
    assert rep.summary()["deadline_miss_rate"] == pytest.approx(1 / 5)         # existing keys kept


def test_a_pipeline_that_keeps_up_achieves_exactly_the_camera_fps():
    clock = SimClock()
    step, _ = _costed(clock, [0.0])
    rep = run_stream(_frames(30), step, fps=30, clock=clock)
    assert rep.achieved_fps == pytest.approx(30.0)             # not 30 * 30 / 29


def test_custom_deadline_and_frame_limit():
    clock = SimClock()
    step, _ = _costed(clock, [0.02])
    rep = run_stream(_frames(50), step, fps=30, clock=clock, deadline_ms=15, max_frames=12)
    assert rep.frames_processed == 12 and rep.deadline_misses == 12
    with pytest.raises(ConfigError, match="fps=0"):
        run_stream(_frames(2), step, fps=0, clock=clock)


def test_pipeline_predicts_once_per_chunk_over_a_bounded_window():
    calls = []

    def head(x, valid):
        calls.append((x.copy(), valid.copy()))
        return int(valid.sum())

    pipe = HarPipeline(clip_len=3, window=2, size=(4, 4), rgb=lambda f: np.array([f.mean()]),
                       motion=lambda c: np.array([float(len(c))]), head=head)
    outs = [pipe(f) for f in _frames(9)]
    assert outs == [None, None, 1, None, None, 2, None, None, 2]
    x, valid = calls[-1]
    assert x.tolist() == [[4.0, 3.0], [7.0, 3.0]]             # centre frames 4 and 7, then motion
    with pytest.raises(InputError, match="expected 4x4x3"):
        pipe(np.zeros((8, 8, 3), np.uint8))


def test_warm_up_runs_every_model_then_leaves_no_trace():
    """Blank chunks go through rgb, motion and head; afterwards the pipeline predicts exactly as a
    freshly built one (nothing of the warm-up in its window or buffer)."""
    seen = {"rgb": 0, "motion": 0, "head": 0}

    def build():
        def rgb(f):
            seen["rgb"] += 1
            return np.array([f.mean()])

        def motion(c):
            seen["motion"] += 1
            return np.array([float(c.sum())])

        def head(x, valid):
            seen["head"] += 1
            return int(valid.sum() * 1000 + x.sum())
        return HarPipeline(clip_len=3, window=2, size=(4, 4), rgb=rgb, motion=motion, head=head)

    warm = build()
    warm(_frames(1)[0])                                   # a frame left in the buffer: reset drops it too
    ms = warm.warm_up(chunks=2)
    assert ms >= 0.0 and seen == {"rgb": 2, "motion": 2, "head": 2}
    assert not warm.buffer and not warm.memory
    frames, fresh = _frames(9), build()
    outs = [warm(f) for f in frames]
    assert outs == [fresh(f) for f in frames] and outs[2] == 1000 + 1 + 3 * 48  # one valid slot; rgb mean 1, motion sum of 0+1+2 over 48 values
    with pytest.raises(ConfigError, match="warm-up chunks=0"):
        warm.warm_up(chunks=0)


def test_cli_reports_missing_models_and_videos(tmp_path, capsys):
    assert main(["--video", str(tmp_path / "clip.mp4"), "--models", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--video" in err and "clip.mp4: file not found" in err        # the video is checked first
    assert main(["--generate", "1", "--models", str(tmp_path)]) == 2
    assert "model file not found" in capsys.readouterr().err
    assert main(["--generate", "1", "--source", "raft", "--models", str(tmp_path)]) == 2
    assert "--source 'raft'" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--fps", "nan"], "--fps nan: expected a positive, finite frame rate"),
    (["--fps", "inf"], "--fps inf: expected a positive, finite frame rate"),
    (["--fps", "0"], "--fps 0.0: expected a positive"),
    (["--max-frames", "0"], "--max-frames 0: expected at least 1"),
    (["--deadline-ms", "-1"], "--deadline-ms -1.0: expected a positive"),
    (["--queue", "0"], "--queue 0: expected at least 1 frame"),
    (["--generate", "0"], "--generate 0: expected at least 1 clip"),
])
def test_cli_rejects_bad_stream_arguments_before_loading_anything(tmp_path, capsys, args, message):
    out = tmp_path / "run.json"
    argv = ["--generate", "1", *args] if "--generate" not in args else args
    assert main([*argv, "--models", str(tmp_path / "nowhere"), "--json", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_run_stream_rejects_non_finite_rates_and_empty_limits():
    clock = SimClock()
    for kwargs, message in (({"fps": float("nan")}, "fps=nan"), ({"fps": 30.0, "deadline_ms": 0.0}, "deadline_ms=0.0"),
                            ({"fps": 30.0, "max_frames": 0}, "max_frames=0")):
        with pytest.raises(ConfigError, match=message):
            run_stream(_frames(6), lambda f: None, clock=clock, **kwargs)


def test_corrupt_model_files_are_named(tmp_path, capsys):
    models = tiny_rgb_models(tmp_path / "models", ["walk_left", "wave"])
    (models / "teacher" / "rgb.pt").write_bytes(b"not a torch file")
    assert main(["--generate", "1", "--source", "rgb", "--models", str(models)]) == 2
    err = capsys.readouterr().err
    assert "rgb.pt: not a readable model bundle" in err
    from components.har.imfe import onnx_session

    with pytest.raises(InputError, match="IMFE ONNX model not found"):
        onnx_session(tmp_path / "imfe.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    with pytest.raises(InputError, match="bad.onnx: not a readable ONNX model"):
        onnx_session(tmp_path / "bad.onnx")


def test_threads_are_validated_and_set_for_opencv_too(tmp_path, capsys):
    import cv2

    from components.har.stream import load_pipeline

    assert main(["--generate", "1", "--threads", "0", "--models", str(tmp_path)]) == 2
    assert "--threads 0; expected at least 1" in capsys.readouterr().err
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(1)
        with pytest.raises(InputError, match="model file not found"):
            load_pipeline(tmp_path, "tvl1", threads=2)
        assert cv2.getNumThreads() == 2                  # OpenCV flow runs on --threads, like torch
    finally:
        cv2.setNumThreads(before)


def test_generate_with_models_of_other_classes_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    models = tiny_rgb_models(tmp_path / "models", ["ApplyEyeMakeup", "Basketball"])
    out = tmp_path / "reports" / "run.json"
    assert main(["--generate", "1", "--source", "rgb", "--models", str(models), "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--generate renders the synthetic generator's actions" in err and "ApplyEyeMakeup" in err
    assert not out.exists()


def test_json_report_goes_to_a_new_folder_atomically(tmp_path, capsys):
    models = tiny_rgb_models(tmp_path / "models", ["walk_left", "wave"])
    out = tmp_path / "new" / "folder" / "run.json"
    assert main(["--generate", "1", "--source", "rgb", "--models", str(models), "--json", str(out),
                 "--fps", "1000", "--queue", "100"]) == 0
    import json

    report = json.loads(out.read_text())
    assert report["frames_in"] == 12 and len(report["predicted"]) == 2
    assert report["warmup_ms"] > 0                              # warmed up before timing, by default
    cold = tmp_path / "cold.json"
    assert main(["--generate", "1", "--source", "rgb", "--models", str(models), "--json", str(cold),
                 "--fps", "1000", "--queue", "100", "--no-warmup"]) == 0
    assert json.loads(cold.read_text())["warmup_ms"] is None
    assert sorted(p.name for p in out.parent.iterdir()) == ["run.json"]       # no temporary left behind


def test_latency_sample_spreads_over_every_class_and_clip():
    """Not the first few clips (= the first few classes): classes take turns, each class's chunks at
    an even stride over its clips; deterministic."""
    from components.har.experiment import Split, latency_sample

    n_cls, clips_per_class, chunks = 8, 8, 3
    labels = np.array([k % n_cls for k in range(n_cls * clips_per_class)])     # interleaved as the data stage writes
    data = [np.full((chunks, 6, 2, 2, 3), k, np.uint8) for k in range(len(labels))]
    for k in range(len(data)):
        data[k][:, 0, 0, 0, 1] = np.arange(chunks)                                # chunk index inside the clip
    split = Split([str(k) for k in range(len(labels))], labels, data)
    s = latency_sample(split, 12)
    clips = s[:, 0, 0, 0, 0].astype(int)
    assert len(s) == 12 and set(labels[clips]) == set(range(n_cls))
    assert np.array_equal(latency_sample(split, 12), s)
    full = latency_sample(split, 48)                       # 6 per class, spread over that class's 8 clips
    per_cls0 = sorted(full[labels[full[:, 0, 0, 0, 0].astype(int)] == 0][:, 0, 0, 0, 0].astype(int))
    assert len(per_cls0) == 6 and per_cls0[-1] >= 7 * n_cls - 8
    assert len(latency_sample(split, 10 ** 6)) == len(labels) * chunks  # at most every chunk once
    assert len({(int(a[0, 0, 0, 0]), int(a[0, 0, 0, 1])) for a in latency_sample(split, 10 ** 6)}) == 192
