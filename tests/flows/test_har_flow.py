"""The har flow end to end on a tiny config under the Prefect test harness, then the streaming CLI
on the video it wrote."""
from __future__ import annotations

import json
import math
import re

import pytest

from tests.conftest import mlflow_client

TINY = {
    "data": {"classes": ["walk_left", "walk_right", "wave", "jump"], "height": 32, "width": 32,
             "frames_per_clip": 12, "train_clips_per_class": 2, "test_clips_per_class": 2},
    "opticalflow": {"workers": 1},
    "streams": {"widths": [8, 16], "epochs": 1},
    "imfe": {"encoder_widths": [8, 8, 8, 16, 16], "compress_dim": 8, "motion_widths": [16, 16, 16],
             "mid_dim": 16, "epochs": 2},
    "temporal": {"d_model": 16, "heads": 2, "long_memory": 2, "epochs": 2},
    # the stream: 5 test clips (labels 0 1 2 3 0, not sorted), a camera buffer that holds all of it (no drop)
    "evaluate": {"seeds": [0, 1], "latency_chunks": 2, "stream_frames": 60, "queue_size": 64},
    "torch_threads": 1,
}


def _finite_numbers(d):
    for v in d.values():
        if isinstance(v, dict):
            yield from _finite_numbers(v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield v


def _snapshot(root, rels=("models/har/heads", "results/har/evaluate", "plots/har", "metrics/har.json")):
    """Every file (bytes) of the evaluate stage's outputs, and every temporary sibling next to them."""
    files = {}
    for rel in rels:
        p = root / rel
        for f in ([p] if p.is_file() else sorted(p.rglob("*"))):
            if f.is_file():
                files[str(f.relative_to(root))] = f.read_bytes()
    leftovers = sorted(str(f) for rel in rels for f in (root / rel).parent.glob(".*tmp-*"))
    return files, leftovers


def _stream_truth(root, cfg):
    """The label of every chunk the streaming benchmark streams, from the data stage's manifest: the test
    clips in manifest order, each clip's whole chunks, the first ``stream_frames // clip_len``."""
    clip_len = cfg.opticalflow.clip_len
    manifest = json.loads((root / "data/har/manifest.json").read_text())
    truth = [c["label"] for c in manifest["clips"] if c["split"] == "test" for _ in range(c["frames"] // clip_len)]
    return truth[:cfg.evaluate.stream_frames // clip_len]


def _scripted(truth, i, num_classes):
    """The prediction the scripted head makes for the i-th chunk: right on even chunks, wrong on odd ones."""
    t = truth[i] if i < len(truth) else 0
    return t if i % 2 == 0 else (t + 1) % num_classes


def _script_stream_heads(m, root, cfg, calls):
    """The streaming runtime's head (``stream.load_pipeline``) replaced by :func:`_scripted` (the real head
    still runs, for the timing); ``calls[source]`` counts the chunks since the last ``reset`` (the warm-up
    ends with one)."""
    import components.har.stream as stream_mod

    real = stream_mod.load_pipeline

    def load(models, source, *a, **k):
        pipe, meta = real(models, source, *a, **k)
        classify, reset, n = pipe.head, pipe.reset, calls.setdefault(source, [0])
        truth = _stream_truth(root, cfg)

        def head(x, valid):
            classify(x, valid)
            n[0] += 1
            return _scripted(truth, n[0] - 1, len(meta["classes"]))

        def restart():
            n[0] = 0
            reset()
        pipe.head, pipe.reset = head, restart
        return pipe, meta
    m.setattr(stream_mod, "load_pipeline", load)


def _record_order(m, events):
    """Record, in order, the stages' MLflow calls (stage, method, metric names), the plots and every
    ``stage_cost()`` of flows.har (the stage cost must be taken after the stage's logging)."""
    import flows.har as har_mod
    from tasks.pipeline import StageContext

    for name in ("log_metrics", "log_table", "log_artifact"):
        def wrapped(self, *a, _orig=getattr(StageContext, name), _name=name, **k):
            events.append((self.stage, _name, tuple(a[0]) if _name == "log_metrics" else ()))
            return _orig(self, *a, **k)
        m.setattr(StageContext, name, wrapped)
    cost, plots = har_mod.stage_cost, har_mod._plots
    m.setattr(har_mod, "stage_cost", lambda: (events.append((None, "cost", ())), cost())[1])
    m.setattr(har_mod, "_plots", lambda *a, **k: (events.append(("evaluate", "plots", ())), plots(*a, **k))[1])


@pytest.mark.slow
def test_har_flow_end_to_end(prefect_harness, paperworks_root, capsys, monkeypatch):
    from components.base import InputError
    from components.har.config import HarConfig
    from components.har.stream import main as stream_main
    from flows.har import STAGES, har

    cfg = HarConfig(**TINY)
    events: list[tuple] = []
    root = paperworks_root
    head_calls: dict[str, list[int]] = {}
    with monkeypatch.context() as m:
        _record_order(m, events)
        _script_stream_heads(m, root, cfg, head_calls)
        har(config=cfg, stages=list(STAGES))

    # each stage's cost is taken after its MLflow logging and plots (only the cost itself is logged later)
    costs = [i for i, e in enumerate(events) if e[1] == "cost"]
    assert len(costs) == len(STAGES)
    for stage, i in zip(STAGES, costs):
        before, after = [e for e in events[:i] if e[0] == stage], [e for e in events[i + 1:] if e[0] == stage]
        assert before, stage
        assert after == ([("evaluate", "log_metrics", ("profile_seconds",))] if stage == "evaluate" else []), stage
    assert ("evaluate", "plots", ()) in events[:costs[-1]]
    assert {e[1] for e in events[:costs[-1]] if e[0] == "evaluate"} == {"log_metrics", "log_table", "log_artifact",
                                                                        "plots"}

    metrics = json.loads((root / "metrics" / "har.json").read_text())
    assert metrics["paper"] == "har" and metrics["profile"] == "quick"
    assert set(metrics["accuracy"]) == {"tvl1", "farneback", "dis", "imfe", "rgb"}
    assert all(0 <= a["online_accuracy"] <= 1 and 0 <= a["stream_accuracy"] <= 1 for a in metrics["accuracy"].values())
    # the runtime's predictions over the streamed clips are scored against the label of their own chunk:
    # the scripted head is right on every even chunk only, so the accuracy is exactly that share, and it
    # would differ with the labels reversed or sorted (or shifted by a chunk)
    truth = _stream_truth(root, cfg)
    assert truth == [0, 0, 1, 1, 2, 2, 3, 3, 0, 0]
    k = len(TINY["data"]["classes"])

    def scored(labels):
        return sum(_scripted(truth, i, k) == t for i, t in enumerate(labels)) / len(labels)

    expected = scored(truth)
    assert expected == 0.5
    assert all(scored(wrong) != expected for wrong in (truth[::-1], sorted(truth), truth[1:] + truth[:1]))
    for source in ("imfe", "tvl1"):
        rep = metrics["stream"][source]
        assert rep["frames_dropped"] == 0 and rep["predictions"] == len(truth) == head_calls[source][0]
        assert rep["online_accuracy"] == expected, source
    assert metrics["latency"]["speedup_imfe_vs_tvl1"] > 0
    assert metrics["stream"]["imfe"]["frames_in"] == 60
    for rep in metrics["stream"].values():     # sustained rate: at most the share processed over the camera span
        assert 0 < rep["achieved_fps"] <= 30.0 * rep["frames_processed"] / rep["frames_in"] * (1 + 1e-12)
        if rep["frames_dropped"] == 0 and rep["latency_ms_max"] <= 1000.0 / 30:   # kept up: exactly the camera's
            assert rep["achieved_fps"] == 30.0
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
    assert rep["frames_processed"] + rep["frames_dropped"] == 60 and rep["predictions"] >= 1
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

    # a failure late in the evaluate stage (the plots, after heads, latency and streaming) leaves every
    # output of the stage as it was: heads, results/har/evaluate, plots and metrics, no temporaries
    import flows.har as har_mod
    from components.har import experiment

    before = _snapshot(root)
    assert len(before[0]) >= 10 and not before[1]

    def broken(*_a, **_k):
        raise RuntimeError("plots failed")

    def not_reached(*_a, **_k):
        raise AssertionError("the evaluate stage went on past a bad input")

    with monkeypatch.context() as m:
        m.setenv("DVC_STAGE", "har_evaluate")         # as under `dvc repro`: no data-stage check (no dvc.yaml here)
        m.setattr(har_mod, "_plots", broken)
        with pytest.raises(RuntimeError, match="plots failed"):
            har(config=cfg, stages=["evaluate"])
        assert _snapshot(root) == before
        # bad inputs are found before any work: a too-long stream, an imfe.json without a key it needs
        m.setattr(experiment, "evaluate_heads", not_reached)
        long = HarConfig(**{**TINY, "evaluate": {**TINY["evaluate"], "stream_frames": 1000}})
        with pytest.raises(InputError, match=r"evaluate.stream_frames=1000: the test split has 96 frames"):
            har(config=long, stages=["evaluate"])
        m.setattr(experiment, "evaluation_inputs", not_reached)
        record = root / "results/har/imfe/imfe.json"
        good = record.read_bytes()
        record.write_text(json.dumps({k: v for k, v in json.loads(good).items() if k != "val_relative_mse"}))
        with pytest.raises(InputError, match=r"imfe/imfe.json: keys \['val_relative_mse'\] missing .*the record the "
                                             r"har imfe stage writes"):
            har(config=cfg, stages=["evaluate"])
        record.write_bytes(good)
        assert _snapshot(root) == before

    # the heads trained in 2 one-thread processes are the heads trained one after another on one thread
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


def test_evaluate_checks_the_earlier_stages_records_first(tmp_path):
    """The evaluate stage reads teacher.json, imfe.json and the timing records before any work; a
    missing file, bad JSON, a missing key or a malformed field is an InputError naming the file and what
    is expected (was a FileNotFoundError / KeyError after minutes of head training)."""
    from types import SimpleNamespace

    from components.base import InputError
    from flows.har import _upstream_records

    paths = SimpleNamespace(results=tmp_path)
    teacher = {"chunk_accuracy": {"rgb": 0.5}, "flow_cpu": {"tvl1": {"ms_per_pair": 40.0}}}
    imfe = {"train_mse": [0.5, 0.4], "val_mse": [0.45, 0.41], "val_relative_mse": 1.02, "val_r2": -0.02,
            "params": 1000, "onnx": {"max_abs_diff": 1.6e-6}, "train_seconds": 12.0}

    def write(stage, name, obj):
        (tmp_path / stage).mkdir(exist_ok=True)
        (tmp_path / stage / name).write_text(obj if isinstance(obj, str) else json.dumps(obj))

    with pytest.raises(InputError, match=r"teacher/teacher.json: missing; expected the record the har teacher stage "
                                         r"writes \(run `python -m flows har teacher` first\)"):
        _upstream_records(paths)
    write("teacher", "teacher.json", teacher)
    write("imfe", "imfe.json", "{not json")
    with pytest.raises(InputError, match=r"imfe/imfe.json: not valid JSON"):
        _upstream_records(paths)
    for bad, needle in (({"onnx": 1.6e-6}, r"onnx=1.6e-06; expected an object with a number max_abs_diff"),
                        ({"val_mse": None}, r"val_mse=None; expected a list of numbers"),
                        ({"val_relative_mse": "high"}, r"val_relative_mse=high; expected a number or null")):
        write("imfe", "imfe.json", {**imfe, **bad})
        with pytest.raises(InputError, match=r"imfe/imfe.json: " + needle):
            _upstream_records(paths)
    write("imfe", "imfe.json", imfe)
    write("teacher", "teacher.json", {**teacher, "flow_cpu": {"tvl1": {}}})
    with pytest.raises(InputError, match=r"teacher.json: flow_cpu=.*expected an object of flow methods"):
        _upstream_records(paths)
    write("teacher", "teacher.json", teacher)
    write("data", "timing.json", {"stage": "data", "wall_s": "13 s", "cpu_s": 14.5})
    with pytest.raises(InputError, match=r"data/timing.json: wall_s=13 s; expected a number of seconds in the timing "
                                         r"record the har data stage writes"):
        _upstream_records(paths)
    write("data", "timing.json", {"stage": "data", "wall_s": 13.2, "cpu_s": 14.5})
    rec = _upstream_records(paths)
    assert rec["imfe"] == imfe and rec["teacher"] == teacher and set(rec["timings"]) == {"data"}


# ---- bad inputs: each stage reads and checks its inputs before it creates any output (or its folder)
SMALL = {**TINY, "data": {**TINY["data"], "classes": ["walk_left", "wave"], "train_clips_per_class": 1,
                          "test_clips_per_class": 2}, "evaluate": {**TINY["evaluate"], "stream_frames": 24}}


@pytest.fixture(scope="module")
def har_inputs(tmp_path_factory):
    """What the stages read, built small: data/har, the teacher stage's stream CNNs, flows and record, and
    IMFE's bundle and record (no ONNX model)."""
    import torch

    from components.har import experiment as ex
    from components.har.config import HarConfig
    from components.har.data import generate_dataset
    from components.har.imfe import ImfeNet
    from components.har.opticalflow import FLOW_METHODS
    from components.har.streams import StreamNet

    torch.set_num_threads(1)
    cfg = HarConfig(**SMALL)
    root = tmp_path_factory.mktemp("har-inputs")
    data, models, results = root / "data" / "har", root / "models" / "har", root / "results" / "har"
    generate_dataset(cfg.data, data, seed=0)
    manifest, _ = ex.load_splits(data, cfg.opticalflow.clip_len)
    flows, _ = ex.compute_flows(data, manifest, cfg.opticalflow)
    for d in (models / "teacher", models / "imfe", results / "teacher", results / "imfe"):
        d.mkdir(parents=True)
    classes, channels = manifest["classes"], {"rgb": 3, **{m: 2 * (cfg.opticalflow.clip_len - 1) for m in FLOW_METHODS}}
    for kind, c in channels.items():
        net = StreamNet(c, len(classes), cfg.streams.widths)
        ex.save_bundle(models / "teacher" / f"{kind}.pt", state_dict=net.state_dict(), in_channels=c,
                       classes=classes, config=cfg.streams.model_dump(), kind=kind)
        if kind != "rgb":
            ex.save_flows(results / "teacher" / f"flows_{kind}.npz", flows[kind])
    (results / "teacher" / "teacher.json").write_text(json.dumps(
        {"chunk_accuracy": {k: 0.5 for k in channels}, "flow_cpu": {m: {"ms_per_pair": 1.0} for m in FLOW_METHODS}}))
    net = ImfeNet(32, 32, cfg.opticalflow.clip_len, cfg.streams.widths[-1], cfg.imfe)
    ex.save_bundle(models / "imfe" / "imfe.pt", state_dict=net.state_dict(), height=32, width=32,
                   num_frames=net.num_frames, feature_dim=net.feature_dim, config=cfg.imfe.model_dump())
    (results / "imfe" / "imfe.json").write_text(json.dumps(
        {"train_mse": [1.0], "val_mse": [1.0], "val_relative_mse": 1.0, "params": 1, "onnx": {"max_abs_diff": 0.0},
         "train_seconds": 1.0}))
    return root


def _tree(root):
    """Every folder and file under ``root`` (relative paths)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _stage_ctx(root, stage, cfg):
    from tasks.paths import paper_paths
    from tasks.pipeline import StageContext

    return StageContext(paper="har", stage=stage, config=cfg, paths=paper_paths("har", root), run=None)


def _copy(src, dest, rels):
    import shutil

    for rel in rels:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (src / rel).is_dir() else shutil.copy)(src / rel, dest / rel)


def _break_manifest(text):
    def edit(root):
        (root / "data/har/manifest.json").write_text(text)
    return edit


def _break_flows(root):
    (root / "results/har/teacher/flows_tvl1.npz").write_bytes(b"PK\x03\x04 truncated")


@pytest.mark.parametrize("stage, present, edit, error", [
    ("teacher", [], None, r"data/har/manifest.json: manifest not found; run the har data stage first"),
    ("teacher", ["data/har"], _break_manifest('{"classes": ["a", "b"], "clips'),
     r"data/har/manifest.json: not valid JSON .*expected a har manifest"),
    ("teacher", ["data/har"], _break_manifest('[{"classes": ["a", "b"]}]'),
     r"data/har/manifest.json: a JSON list, not an object; expected a har manifest"),
    ("teacher", ["data/har"], _break_manifest('{"classes": ["a", "b"], "clips": [["x"]], "fps": 30, "height": 32, '
                                              '"width": 32}'),
     r"data/har/manifest.json: clips\[0\] = \['x'\]; expected an object with a string id"),
    ("teacher", ["data/har"], _break_manifest('{"classes": ["a", "b"], "clips": [], "fps": "30", "height": 32, '
                                              '"width": 32}'),
     r"data/har/manifest.json: fps='30'; expected a positive integer in a har manifest"),
    ("imfe", ["data/har"], None, r"models/har/teacher/tvl1.pt: model file not found"),
    ("imfe", ["data/har", "models/har/teacher"], None, r"results/har/teacher/flows_tvl1.npz: flow file not found"),
    ("imfe", ["data/har", "models/har/teacher", "results/har/teacher"], _break_flows,
     r"results/har/teacher/flows_tvl1.npz: not a readable flow archive \(BadZipFile"),
    ("evaluate", ["results/har/teacher", "results/har/imfe"], None,
     r"data/har/manifest.json: manifest not found"),
    ("evaluate", ["data/har", "results/har/teacher", "results/har/imfe"], None,
     r"models/har/teacher/rgb.pt: model file not found"),
    ("evaluate", ["data/har", "models/har/teacher", "models/har/imfe", "results/har/teacher", "results/har/imfe"],
     None, r"models/har/imfe/imfe.onnx: IMFE ONNX model not found"),
], ids=["teacher-no-data", "teacher-bad-json", "teacher-json-list", "teacher-bad-clip", "teacher-bad-fps",
        "imfe-no-teacher", "imfe-no-flows", "imfe-corrupt-flows", "evaluate-no-data", "evaluate-no-models",
        "evaluate-no-onnx"])
def test_stage_with_a_bad_input_creates_nothing(har_inputs, tmp_path, stage, present, edit, error):
    """A missing or malformed input of a stage is an InputError naming the file, raised before the stage
    creates anything: no output, no temporary sibling and no empty folder (models/har, results/har,
    plots/har or metrics/ used to be left behind)."""
    import flows.har as har_mod
    from components.base import InputError
    from components.har.config import HarConfig

    root = tmp_path / "root"
    root.mkdir()
    _copy(har_inputs, root, present)
    if edit is not None:
        edit(root)
    before = _tree(root)
    with pytest.raises(InputError, match=error):
        getattr(har_mod, stage).fn(_stage_ctx(root, stage, HarConfig(**SMALL)))
    assert _tree(root) == before


def test_data_stage_checks_the_ucf101_folder_before_creating_data(tmp_path):
    import flows.har as har_mod
    from components.base import InputError
    from components.har.config import HarConfig

    root = tmp_path / "root"
    root.mkdir()
    missing = tmp_path / "ucf"
    cfg = HarConfig(**{**SMALL, "data": {**SMALL["data"], "source": "ucf101", "ucf101_root": str(missing)}})
    with pytest.raises(InputError, match=re.escape(f"data.ucf101_root='{missing}': not a folder")):
        har_mod.data.fn(_stage_ctx(root, "data", cfg))
    (missing / "OnlyClass").mkdir(parents=True)                 # one class, no video
    with pytest.raises(InputError, match=r"found 1 class folders and 0 videos"):
        har_mod.data.fn(_stage_ctx(root, "data", cfg))
    assert _tree(root) == []
