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
    assert rep.achieved_fps == 10.0                             # 20 frames over the 2 s they cover (not 20 / 2.01)
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
    assert rep.achieved_fps == 10.0                 # every frame processed: the lag shows in latency and misses
    assert rep.missed_or_dropped == 2


def test_a_backlog_past_the_cameras_last_period_lowers_the_achieved_fps():
    # every frame takes 150 ms at 10 fps and the queue never overflows: nothing is dropped, but the
    # last of 6 frames completes at 0.9 s, past the 0.6 s the camera covered -> 6 / 0.9 fps
    clock = SimClock()
    step, seen = _costed(clock, [0.15])
    rep = run_stream(_frames(6), step, fps=10, clock=clock, queue_size=10)
    assert seen == [0, 1, 2, 3, 4, 5] and rep.frames_dropped == 0
    assert rep.achieved_fps == pytest.approx(6 / 0.9)


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
    assert rep.achieved_fps == pytest.approx(10.0 * 5 / 6)     # 5 frames processed over the 6 periods that arrived


@pytest.mark.parametrize("cost_s", [0.0, 0.001, 0.02, 0.033])
def test_a_pipeline_that_keeps_up_achieves_exactly_the_camera_fps(cost_s):
    """Processing time inside one period does not lower the sustained rate (it was N / (N periods +
    the last frame's processing time): 29.92 at 30 fps on the quick profile)."""
    clock = SimClock()
    step, _ = _costed(clock, [cost_s])
    rep = run_stream(_frames(180), step, fps=30, clock=clock)
    assert rep.frames_processed == 180 and rep.frames_dropped == 0 and rep.deadline_misses == 0
    assert rep.achieved_fps == 30.0                            # exactly: the >= 30 claim holds for a pipeline that keeps up
    rep = run_stream(_frames(90), _costed(clock, [cost_s])[0], fps=29.97, clock=clock)
    assert rep.achieved_fps == 29.97


def test_a_pipeline_that_drops_frames_achieves_its_own_rate():
    # 50 ms per frame at 30 fps (a 20 fps pipeline) with a 2-frame buffer: a frame is lost every few frames
    clock = SimClock()
    step, _ = _costed(clock, [0.05])
    rep = run_stream(_frames(90), step, fps=30, clock=clock)
    # 3 s of arrivals at 20 processed frames/s, + the 2 frames in the buffer when the camera stops
    assert rep.frames_processed == 62 and rep.frames_dropped == 28 and rep.frames_in == 90
    # the 62nd frame completes at 3.1 s, after the camera's 3.0 s: the pipeline's own 20 fps, not
    # 30 * 62/90 = 20.67 (the share processed over the camera span alone)
    assert rep.achieved_fps == pytest.approx(62 / 3.1) == pytest.approx(20.0)


def test_prediction_latency_is_over_the_frames_that_complete_a_chunk():
    """Only every 3rd frame runs the models here (40 ms); the others cost 1 ms. The per-frame p50 is a
    buffered frame's; the per-prediction percentiles are the chunks' own."""
    clock = SimClock()
    n = []

    def step(frame):
        n.append(1)
        if len(n) % 3:
            clock.advance(0.001)
            return None
        clock.advance(0.040 if len(n) < 12 else 0.080)   # the last chunk is slower
        return 0
    rep = run_stream(_frames(12), step, fps=10, clock=clock)
    assert rep.predictions == 4 and rep.latency_ms_p50 == pytest.approx(1.0)
    assert rep.prediction_latencies_ms == pytest.approx([40, 40, 40, 80])
    assert rep.prediction_latency_ms_p50 == pytest.approx(40.0)
    assert rep.prediction_latency_ms_p99 == pytest.approx(40 + 0.97 * 40)   # numpy's linear interpolation
    summary = rep.summary()
    assert "prediction_latencies_ms" not in summary and summary["prediction_latency_ms_p50"] == pytest.approx(40.0)
    empty = run_stream(_frames(2), step, fps=10, clock=clock)
    assert empty.predictions == 0 and empty.prediction_latency_ms_p50 is None


def test_a_source_that_ends_stops_the_run_at_the_last_completion():
    """A file's end is seen while waiting for the next frame: the run does not sleep one more period
    (3 frames at 2 fps used to take 1.5 s, not 1.0 s + the last frame's work)."""
    clock = SimClock()
    step, _ = _costed(clock, [0.01])
    rep = run_stream(iter(_frames(3)), step, fps=2, clock=clock)
    assert rep.frames_processed == 3 and clock.now() == pytest.approx(1.01)
    clock = SimClock()
    rep = run_stream(_frames(5), _costed(clock, [0.01])[0], fps=2, clock=clock, max_frames=3)
    assert rep.frames_in == 3 and clock.now() == pytest.approx(1.01)


def test_the_time_to_get_frames_from_the_source_is_reported_and_counted_in_capacity_with_source():
    """Decoding runs on the runtime's thread: a source taking 40 ms per frame at 30 fps cannot keep up
    even with a 1 ms pipeline. capacity_fps (the pipeline alone) says ~1000, the source-inclusive
    capacity says ~24, and frames are dropped."""
    clock = SimClock()
    step, _ = _costed(clock, [0.001])

    def slow_source(n):
        for f in _frames(n):
            clock.advance(0.040)
            yield f
    rep = run_stream(slow_source(30), step, fps=30, clock=clock)
    assert rep.source_ms_mean == pytest.approx(40.0)
    assert rep.capacity_fps == pytest.approx(1000.0)
    assert rep.capacity_fps_with_source == pytest.approx(1 / 0.041)
    assert rep.frames_dropped > 0 and rep.achieved_fps < 30
    # a free source: both capacities agree
    clock2 = SimClock()
    rep = run_stream(_frames(30), _costed(clock2, [0.001])[0], fps=30, clock=clock2)
    assert rep.source_ms_mean == 0.0 and rep.capacity_fps_with_source == pytest.approx(rep.capacity_fps)


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
    assert ms > 0.0 and seen == {"rgb": 2, "motion": 2, "head": 2}
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
    (["--generate", "0"], "--generate 0: expected 1 to 1000 clips"),
    (["--generate", "1001"], "--generate 1001: expected 1 to 1000 clips (they are rendered into memory)"),
    (["--fps", "1e-300"], "--fps 1e-300: expected a positive, finite frame rate from 0.1 to 1000 frames per second"),
    (["--fps", "1001"], "--fps 1001.0: expected a positive, finite frame rate from 0.1 to 1000"),
])
def test_cli_rejects_bad_stream_arguments_before_loading_anything(tmp_path, capsys, args, message):
    out = tmp_path / "run.json"
    argv = ["--generate", "1", *args] if "--generate" not in args else args
    assert main([*argv, "--models", str(tmp_path / "nowhere"), "--json", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--fps", "1e-300"], "--fps 1e-300: expected a positive, finite frame rate from 0.1 to 1000"),  # was an OverflowError
    (["--fps", "0.05"], "--fps 0.05: expected a positive, finite frame rate from 0.1 to 1000"),
    (["--json", "{tmp}"], "--json {tmp}: a folder; expected the path of a file"),   # was an IsADirectoryError after the run
    (["--json", "{tmp}/"], "--json {tmp}/: a folder; expected the path of a file"),
    (["--json", "{tmp}/file.txt/run.json"], "--json {tmp}/file.txt/run.json: {tmp}/file.txt is a file, not a folder"),
])
def test_cli_rejects_a_bad_rate_or_report_path_before_the_run(tmp_path, capsys, args, message):
    """With models that would run: the error comes first, names the flag, the value and what is
    expected, and nothing is streamed (no report on stdout)."""
    models = tiny_rgb_models(tmp_path / "models", ["walk_left", "wave"])
    (tmp_path / "file.txt").write_text("x")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["--generate", "1", "--source", "rgb", "--models", str(models), "--queue", "100", *argv]) == 2
    out = capsys.readouterr()
    assert message.replace("{tmp}", str(tmp_path)) in out.err and out.out == ""
    assert (tmp_path / "file.txt").read_text() == "x"


def test_cli_accepts_the_slowest_rate(tmp_path, capsys, monkeypatch):
    """0.1 fps (the range's low end) runs one chunk: 6 frames over 50 s of (simulated) camera time."""
    import json

    import components.har.stream as stream

    monkeypatch.setattr(stream, "WallClock", SimClock)          # 50 s of camera time, no real waiting
    models = tiny_rgb_models(tmp_path / "models", ["walk_left", "wave"])
    report = tmp_path / "run.json"
    assert main(["--generate", "1", "--source", "rgb", "--models", str(models), "--fps", "0.1", "--max-frames", "6",
                 "--json", str(report)]) == 0
    rec = json.loads(report.read_text())
    assert rec["frames_processed"] == 6 and rec["predictions"] == 1 and rec["achieved_fps"] == 0.1


def test_cli_rejects_a_frame_limit_shorter_than_one_chunk(tmp_path, capsys):
    """A run that cannot complete a chunk predicts nothing: it used to exit 0 with online accuracy 0."""
    models = tiny_rgb_models(tmp_path / "models", ["walk_left", "wave"])
    report = tmp_path / "run.json"
    assert main(["--generate", "1", "--source", "rgb", "--models", str(models), "--max-frames", "5",
                 "--json", str(report)]) == 2
    out = capsys.readouterr()
    assert "error: --max-frames 5: fewer frames than one chunk; expected at least 6" in out.err and out.out == ""
    assert not report.exists()


def test_cli_streams_a_video_file_and_names_a_bad_one(tmp_path, capsys):
    """A video through the CLI: a corrupt file and one shorter than a chunk stop before timing (exit 2,
    no report); a good one reports every frame and one prediction per chunk."""
    import json

    from components.har.video import write_video

    models = tiny_rgb_models(tmp_path / "models", ["walk_left", "wave"])          # 32x32, clip_len 6
    report = tmp_path / "run.json"
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    short = write_video(tmp_path / "short.mp4", np.zeros((3, 32, 32, 3), np.uint8), fps=30)
    for video, message in ((bad, "cannot be read as a video"), (short, "3 frames; expected at least 6")):
        assert main(["--video", str(video), "--source", "rgb", "--models", str(models), "--json", str(report)]) == 2
        out = capsys.readouterr()
        assert message in out.err and f"error: --video {video}: " in out.err and out.out == ""
        assert not report.exists()
    good = write_video(tmp_path / "good.mp4", np.zeros((14, 32, 32, 3), np.uint8), fps=30)
    assert main(["--video", str(good), "--source", "rgb", "--models", str(models), "--json", str(report),
                 "--fps", "1000", "--queue", "100"]) == 0
    rec = json.loads(report.read_text())
    assert rec["frames_in"] == rec["frames_processed"] == 14 and rec["predictions"] == 2
    assert rec["source_ms_mean"] > 0 and "online_accuracy" not in rec         # decoding is timed; no labels


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


def test_stream_sequence_is_the_test_clips_back_to_back_and_never_cut_short():
    """The evaluate stage's video: the first n frames of the test clips (whole chunks) and a label per
    chunk of the clips used; more frames than the split has is an InputError naming the parameter
    (the stream used to be cut short silently)."""
    from components.har.experiment import Split, stream_sequence

    chunks = [np.full((2, 6, 4, 4, 3), k, np.uint8) for k in range(3)]       # 3 clips of 12 frames
    split = Split(["a", "b", "c"], np.array([2, 0, 1]), chunks)
    frames, truth = stream_sequence(split, 18)
    assert frames.shape == (18, 4, 4, 3) and frames[:, 0, 0, 0].tolist() == [0] * 12 + [1] * 6
    assert truth == [2, 2, 0, 0]
    frames, truth = stream_sequence(split, 36)
    assert len(frames) == 36 and truth == [2, 2, 0, 0, 1, 1]
    with pytest.raises(InputError, match=r"evaluate.stream_frames=37: the test split has 36 frames \(3 clips, "
                                         r"whole chunks\); expected at most 36"):
        stream_sequence(split, 37)


def test_cli_rejects_a_negative_seed_before_loading_anything(tmp_path, capsys):
    """``--generate 1 --seed -1`` used to load the models, then fail in numpy with a traceback."""
    models = tiny_rgb_models(tmp_path / "models", ["walk_left", "wave"])
    assert main(["--generate", "1", "--seed", "-1", "--source", "rgb", "--models", str(models)]) == 2
    out = capsys.readouterr()
    assert "error: --seed -1: expected a non-negative integer" in out.err and out.out == ""


def test_cli_wrong_video_size_names_the_resize_flag(tmp_path, capsys):
    from components.har.video import write_video

    models = tiny_rgb_models(tmp_path / "models", ["walk_left", "wave"])          # 32x32 models
    video = write_video(tmp_path / "v.mp4", np.zeros((12, 48, 48, 3), np.uint8), fps=30)
    assert main(["--video", str(video), "--source", "rgb", "--models", str(models)]) == 2
    err = capsys.readouterr().err
    assert f"error: --video {video}: frame size 48x48 (HxW); expected 32x32 (pass --resize to rescale)" in err
