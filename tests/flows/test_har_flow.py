"""The har flow end to end on a tiny config under the Prefect test harness, then the streaming CLI
on the video it wrote."""
from __future__ import annotations

import json
import math

import pytest

from tests.conftest import mlflow_client

TINY = {
    "data": {"classes": ["walk_left", "walk_right", "wave", "jump"], "height": 32, "width": 32,
             "frames_per_clip": 12, "train_clips_per_class": 2, "test_clips_per_class": 1},
    "opticalflow": {"workers": 1},
    "streams": {"widths": [8, 16], "epochs": 1},
    "imfe": {"encoder_widths": [8, 8, 8, 16, 16], "compress_dim": 8, "motion_widths": [16, 16, 16],
             "mid_dim": 16, "epochs": 2},
    "temporal": {"d_model": 16, "heads": 2, "long_memory": 2, "epochs": 2},
    "evaluate": {"seeds": [0, 1], "latency_chunks": 2, "stream_frames": 24},
    "torch_threads": 1,
}


def _finite_numbers(d):
    for v in d.values():
        if isinstance(v, dict):
            yield from _finite_numbers(v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield v


@pytest.mark.slow
def test_har_flow_end_to_end(prefect_harness, paperworks_root, capsys, monkeypatch):
    from components.har.config import HarConfig
    from components.har.stream import main as stream_main
    from flows.har import STAGES, har

    cfg = HarConfig(**TINY)
    har(config=cfg, stages=list(STAGES))
    root = paperworks_root

    metrics = json.loads((root / "metrics" / "har.json").read_text())
    assert metrics["paper"] == "har" and metrics["profile"] == "quick"
    assert set(metrics["accuracy"]) == {"tvl1", "farneback", "dis", "imfe", "rgb"}
    assert all(0 <= a["online_accuracy"] <= 1 and 0 <= a["stream_accuracy"] <= 1 for a in metrics["accuracy"].values())
    for source in ("imfe", "tvl1"):   # the runtime's own predictions over the streamed clips
        if metrics["stream"][source]["frames_dropped"] == 0:
            assert 0 <= metrics["stream"][source]["online_accuracy"] <= 1
    assert metrics["latency"]["speedup_imfe_vs_tvl1"] > 0
    assert metrics["stream"]["imfe"]["frames_in"] == 24
    assert metrics["imfe"]["onnx_max_abs_diff"] < 1e-4
    assert set(metrics["profile_seconds"]) >= {"total_wall_s", "total_cpu_s", "data_wall_s", "evaluate_cpu_s"}
    assert all(math.isfinite(v) for v in _finite_numbers(metrics))
    for path in ("data/har/manifest.json", "models/har/teacher/tvl1.pt", "models/har/imfe/imfe.onnx",
                 "models/har/heads/imfe.pt", "results/har/evaluate/stream.mp4", "plots/har/accuracy_latency.png"):
        assert (root / path).is_file(), path

    client = mlflow_client(root)
    exp = client.get_experiment_by_name("har")
    assert "RT-HARE" in exp.tags["mlflow.note.content"]
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 5 * 2                                     # every source x every seed
    parent = parents[0]
    assert parent.data.params["imfe.downsample"] == "4"
    assert "latency.speedup_imfe_vs_tvl1" in parent.data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"plots", "tables"} <= artifacts
    tables = {a.path for a in client.list_artifacts(parent.info.run_id, "tables")}
    assert "tables/accuracy_by_source.md" in tables

    # the runtime from the command line, on the video file the stage wrote
    video = root / "results/har/evaluate/stream.mp4"
    out = root / "stream.json"
    assert stream_main(["--video", str(video), "--models", str(root / "models/har"), "--fps", "60",
                        "--json", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["frames_processed"] + rep["frames_dropped"] == 24 and rep["predictions"] >= 1
    assert set(rep["predicted"]) <= set(TINY["data"]["classes"])
    # bad input: a missing video, a wrong frame size and a clip shorter than one chunk
    from components.har.video import write_video
    import numpy as np

    assert stream_main(["--video", str(root / "nope.mp4"), "--models", str(root / "models/har")]) == 2
    assert "nope.mp4: file not found" in capsys.readouterr().err
    write_video(root / "big.mp4", np.zeros((12, 48, 48, 3), np.uint8), fps=30)
    assert stream_main(["--video", str(root / "big.mp4"), "--models", str(root / "models/har")]) == 2
    assert "frame size 48x48" in capsys.readouterr().err
    write_video(root / "short.mp4", np.zeros((4, 32, 32, 3), np.uint8), fps=30)
    assert stream_main(["--video", str(root / "short.mp4"), "--models", str(root / "models/har")]) == 2
    assert "4 frames; expected at least 6" in capsys.readouterr().err

    # a failure late in the evaluate stage (latency benchmark) leaves the old heads in place
    from components.har import experiment

    heads = {p.name: p.read_bytes() for p in (root / "models/har/heads").iterdir()}
    metrics_before = (root / "metrics" / "har.json").read_bytes()

    def broken(*_a, **_k):
        raise RuntimeError("latency benchmark failed")

    monkeypatch.setattr(experiment, "latency_benchmark", broken)
    with pytest.raises(Exception):
        har(config=cfg, stages=["evaluate"])
    assert {p.name: p.read_bytes() for p in (root / "models/har/heads").iterdir()} == heads
    assert (root / "metrics" / "har.json").read_bytes() == metrics_before

    # the heads trained in 2 one-thread processes are the heads trained one after another on one thread
    monkeypatch.undo()
    inputs = experiment.evaluation_inputs(cfg, root / "data/har", root / "models/har", root / "results/har")
    manifest, splits, nets, flows, meta = inputs
    lines = []
    by_threads = {}
    for threads in (1, 2):
        two = cfg.model_copy(update={"torch_threads": threads})
        rows, per_source = experiment.evaluate_heads(two, manifest["classes"], splits, flows, nets, None, meta,
                                                     lambda msg, *a: lines.append(msg % a))
        by_threads[threads] = ([{k: v for k, v in r.items() if k != "train_seconds"} for r in rows], per_source)
    assert by_threads[1] == by_threads[2]
    assert any("in 2 process(es) of 1 torch thread(s)" in line for line in lines)
    assert sum("done (" in line for line in lines) == 2 * 5 * 2  # a line per head, both runs


def test_bad_parameter_stops_before_writing(paperworks_root, capsys):
    from flows.__main__ import main

    assert main(["har", "data", "--set", "data.height=50"]) == 2
    assert "har.data.height: got 50" in capsys.readouterr().err
    assert not (paperworks_root / "data").exists()
