"""The streaming runtime computes what the evaluate stage measures: per-source features of
``stream.load_pipeline`` (RGB CNN, IMFE through onnxruntime, TV-L1 flow + flow CNN) equal the
training/evaluation path's (``experiment.source_features`` on the teacher stage's flow) and its
predictions equal ``stream_windows`` + ``predict_last``; ``run_imfe`` refuses an ONNX export that
disagrees with PyTorch."""
from __future__ import annotations

import json

import numpy as np
import pytest

from components.har.config import (DataConfig, HarConfig, ImfeConfig, OpticalFlowConfig, StreamNetConfig,
                                   TemporalConfig)

CLASSES = ["walk_left", "wave", "jump"]
DATA = DataConfig(classes=CLASSES, height=32, width=32, frames_per_clip=12, train_clips_per_class=1,
                  test_clips_per_class=1)
IMFE = ImfeConfig(encoder_widths=[8, 8, 8, 8, 8], compress_dim=4, motion_widths=[8, 8, 8], mid_dim=8,
                  epochs=1, batch_size=4)
TEMPORAL = TemporalConfig(d_model=8, heads=2, long_memory=2, short_window=2, latent_queries=2, dropout=0.0,
                          epochs=40, lr=1e-2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny data stage (3 classes, a train and a test clip each), the teacher stage's TV-L1 flow of
    every clip and untrained stream CNNs saved where the later stages look for them."""
    import torch

    from components.har.data import generate_dataset
    from components.har.experiment import compute_flows, load_splits, save_bundle, save_flows
    from components.har.streams import StreamNet

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("har")
    data_dir, models, results = root / "data", root / "models", root / "results"
    generate_dataset(DATA, data_dir, seed=0)
    fcfg = OpticalFlowConfig(workers=1)
    manifest, splits = load_splits(data_dir, fcfg.clip_len)
    flows, _ = compute_flows(data_dir, manifest, fcfg, ("tvl1",))      # what the teacher stage stores
    (models / "teacher").mkdir(parents=True)
    (results / "teacher").mkdir(parents=True)
    save_flows(results / "teacher" / "flows_tvl1.npz", flows["tvl1"])
    scfg = StreamNetConfig(widths=[8])
    nets = {}
    for kind, channels in (("rgb", 3), ("tvl1", 2 * (fcfg.clip_len - 1))):
        torch.manual_seed(len(kind))
        net = StreamNet(channels, len(CLASSES), scfg.widths).eval()
        save_bundle(models / "teacher" / f"{kind}.pt", state_dict=net.state_dict(), in_channels=channels,
                    classes=CLASSES, config=scfg.model_dump(), kind=kind)
        nets[kind] = net
    return {"root": root, "data": data_dir, "models": models, "results": results, "manifest": manifest,
            "splits": splits, "flows": flows, "nets": nets, "fcfg": fcfg}


def test_streaming_pipeline_matches_the_evaluation_features_and_predictions(tiny):
    import torch

    from components.har import experiment as ex
    from components.har.imfe import ImfeNet, export_onnx
    from components.har.stream import SimClock, load_pipeline, run_stream
    from components.har.temporal import predict_last, stream_windows, train_head, training_windows

    models, test = tiny["models"], tiny["splits"]["test"]
    torch.manual_seed(3)
    imfe = ImfeNet(32, 32, tiny["fcfg"].clip_len, 8, IMFE).eval()
    (models / "imfe").mkdir(exist_ok=True)
    export_onnx(imfe, models / "imfe" / "imfe.onnx", IMFE.onnx_opset)
    nets = {**tiny["nets"], "imfe": imfe}
    flows = {"tvl1": [tiny["flows"]["tvl1"][i] for i in test.ids]}
    meta = {"classes": CLASSES, "clip_len": tiny["fcfg"].clip_len, "height": 32, "width": 32, "fps": 30,
            "frames_per_clip": 12, "opticalflow": tiny["fcfg"].model_dump(by_alias=True)}
    frames, _ = ex.stream_sequence(test, sum(c.shape[0] * c.shape[1] for c in test.chunks))
    rgb = ex.rgb_features(test, nets)
    window = TEMPORAL.long_memory + TEMPORAL.short_window
    (models / "heads").mkdir(exist_ok=True)
    for k, source in enumerate(("rgb", "imfe", "tvl1")):
        # the evaluate stage's path: per-clip features -> the continuous stream's windows -> last token
        feats = ex.source_features(source, test, flows, nets, rgb)
        # a head fitted to these few windows (an untrained one predicts one class everywhere)
        x, v, y = training_windows(feats, list(test.labels), window, 0, seed=k)
        head, _ = train_head(x, v, y, len(CLASSES), TEMPORAL, seed=k)
        ex.save_bundle(models / "heads" / f"{source}.pt", state_dict=head.state_dict(), in_dim=feats[0].shape[1],
                       config=TEMPORAL.model_dump(), meta=meta)
        xs, vs, _ = stream_windows(feats, list(test.labels), window)
        expected = predict_last(head, xs, vs).tolist()

        # the runtime's path: frames one at a time through the loaded pipeline (IMFE on onnxruntime)
        pipe, _ = load_pipeline(models, source, "onnx", threads=1)
        seen, classify = [], pipe.head
        pipe.head = lambda x, valid: (seen.append((x.copy(), valid.copy())), classify(x, valid))[1]
        rep = run_stream(list(frames), pipe, fps=30, clock=SimClock(), queue_size=len(frames))
        assert rep.frames_dropped == 0 and rep.predictions == len(expected)
        np.testing.assert_allclose(np.stack([x[-1] for x, _ in seen]), np.concatenate(feats), rtol=1e-5, atol=1e-5,
                                   err_msg=f"{source}: runtime features differ from the evaluation features")
        np.testing.assert_allclose(np.stack([x for x, _ in seen]), xs.numpy(), rtol=1e-5, atol=1e-5,
                                   err_msg=f"{source}: the runtime's windows differ from stream_windows'")
        assert np.array_equal(np.stack([v for _, v in seen]), vs.numpy()), source
        assert rep.labels == expected, source
        assert len(set(expected)) > 1, source     # the comparison is not trivially one class everywhere


def test_check_onnx_parity_threshold(tmp_path):
    from components.har.experiment import ONNX_PARITY_TOL, OnnxParityError, check_onnx_parity

    assert ONNX_PARITY_TOL == 1e-4
    check_onnx_parity({"max_abs_diff": 1.6e-6, "max_rel_diff": 1e-7}, tmp_path / "imfe.onnx", 8)
    check_onnx_parity({"max_abs_diff": 1e-4, "max_rel_diff": 1e-5}, tmp_path / "imfe.onnx", 8)
    for bad in (2e-4, float("nan"), float("inf")):
        with pytest.raises(OnnxParityError, match=r"imfe.onnx: onnxruntime and PyTorch disagree .*expected at most "
                                                  r"0.0001"):
            check_onnx_parity({"max_abs_diff": bad, "max_rel_diff": bad}, tmp_path / "imfe.onnx", 8)


def test_run_imfe_refuses_an_onnx_model_that_disagrees_with_pytorch(tiny, tmp_path, monkeypatch):
    from components.har import imfe as imfe_mod
    from components.har.experiment import ONNX_PARITY_TOL, OnnxParityError, run_imfe

    cfg = HarConfig(data=DATA, opticalflow={"workers": 1}, imfe=IMFE, torch_threads=1)
    models, res = tmp_path / "models", tmp_path / "res"
    models.mkdir()
    res.mkdir()
    summary = run_imfe(cfg, tiny["data"], tiny["models"] / "teacher", tiny["results"] / "teacher", models, res)
    assert summary["onnx"]["max_abs_diff"] <= ONNX_PARITY_TOL
    assert json.loads((res / "imfe.json").read_text())["onnx"] == summary["onnx"]

    real = imfe_mod.onnx_parity

    def off(*a, **k):                       # what a broken export (or onnxruntime) would give
        p = real(*a, **k)
        return {**p, "max_abs_diff": p["max_abs_diff"] + 3e-3}

    monkeypatch.setattr(imfe_mod, "onnx_parity", off)
    (res / "imfe.json").unlink()
    with pytest.raises(OnnxParityError, match=r"disagree on IMFE's motion feature by up to 0.003"):
        run_imfe(cfg, tiny["data"], tiny["models"] / "teacher", tiny["results"] / "teacher", models, res)
    assert not (res / "imfe.json").exists()
