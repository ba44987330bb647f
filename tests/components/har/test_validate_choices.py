"""benchmarks/har/validate_choices.py: the validation clips are new clips, an alternative changes only what
it names, and the committed settings scored on the test split reproduce the evaluate stage's figures."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from tests.conftest import load_script

TINY = {
    "data": {"classes": ["walk_left", "walk_right", "wave", "jump"], "height": 32, "width": 32,
             "frames_per_clip": 12, "train_clips_per_class": 2, "test_clips_per_class": 1},
    "opticalflow": {"workers": 1},
    "streams": {"widths": [8], "epochs": 1},
    "imfe": {"encoder_widths": [8, 8, 8, 8, 8], "compress_dim": 4, "motion_widths": [8, 8, 8],
             "mid_dim": 8, "epochs": 1},
    "temporal": {"d_model": 8, "heads": 2, "long_memory": 1, "latent_queries": 2, "epochs": 2},
    "evaluate": {"seeds": [0, 1]},
    "torch_threads": 1,
}


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/har/validate_choices.py")


@pytest.fixture(scope="module")
def params(tmp_path_factory):
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(yaml.safe_dump({"har": TINY}))
    return path


@pytest.fixture(scope="module")
def base(params):
    from components.har.config import HarConfig
    from tasks.params import load_config

    return load_config(HarConfig, params_path=params)


@pytest.fixture(scope="module")
def committed(tmp_path_factory, base):
    """A tiny committed run (data, teacher, IMFE) under <root>/{data,models,results}/har."""
    import torch

    from components.har import experiment as ex
    from components.har.data import generate_dataset

    root = tmp_path_factory.mktemp("har-root")
    data, models, results = root / "data" / "har", root / "models" / "har", root / "results" / "har"
    for d in (data, models / "teacher", models / "imfe", results / "teacher", results / "imfe"):
        d.mkdir(parents=True)
    before = torch.get_num_threads()
    generate_dataset(base.data, data, base.seed)
    ex.run_teacher(base, data, models / "teacher", results / "teacher")
    ex.run_imfe(base, data, models / "teacher", results / "teacher", models / "imfe", results / "imfe")
    torch.set_num_threads(before)
    return root


def test_alternatives_change_only_what_they_name(bench, base, params):
    alt = bench.alternative(base, ["temporal.epochs=4"], params)
    assert alt["changes"] == {"temporal.epochs": 4} and alt["flows"] == [] and alt["nets"] == []
    assert alt["config"].temporal.epochs == 4 and alt["config"].streams == base.streams
    assert bench.scored_sources(alt, base) == base.evaluate.sources

    alt = bench.alternative(base, ["opticalflow.tvl1.nscales=5", "opticalflow.tvl1.warps=5"], params)
    assert alt["changes"] == {"opticalflow.tvl1.nscales": 5, "opticalflow.tvl1.warps": 5}
    assert alt["flows"] == ["tvl1"] and alt["nets"] == ["tvl1"] and alt["drop_imfe"]
    assert bench.scored_sources(alt, base) == ["tvl1"]          # IMFE's teacher changed: left out

    alt = bench.alternative(base, ["opticalflow.dis_preset=fast"], params)
    assert alt["flows"] == ["dis"] and not alt["drop_imfe"] and bench.scored_sources(alt, base) == ["dis"]

    alt = bench.alternative(base, ["streams.epochs=2"], params)
    assert alt["nets"] == ["rgb", "tvl1", "farneback", "dis"] and alt["flows"] == []
    assert bench.scored_sources(alt, base) == ["tvl1", "farneback", "dis", "rgb"]   # RGB feeds every head


@pytest.mark.parametrize("items, words", [
    (["imfe.epochs=3"], ["imfe", "expected changes to temporal, streams or opticalflow"]),
    (["opticalflow.clip_len=4"], ["opticalflow.clip_len"]),
    (["temporal.epochs=2"], ["changes nothing"]),
    (["temporal.epoch=2"], ["temporal.epoch"]),
    (["temporal.epochs=-1"], ["temporal.epochs"]),
    (["temporal.epochs"], ["expected KEY=VALUE"]),
])
def test_a_bad_alternative_is_named(bench, base, params, items, words):
    from components.base import ConfigError

    with pytest.raises(ConfigError) as err:
        bench.alternative(base, items, params)
    assert str(err.value).startswith(f"--alternative {' '.join(items)}: ")
    assert all(w in str(err.value) for w in words), str(err.value)


def test_a_bad_alternative_exits_2_before_any_work(bench, params, tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = bench.main(["--params", str(params), "--root", str(tmp_path), "--alternative", "data.fps=10",
                     "--out", str(out)])
    assert rc == 2 and not out.exists()
    assert "--alternative data.fps=10: changes data" in capsys.readouterr().err


def test_validation_clips_are_new_clips_read_back_like_the_data_stage(bench, base, tmp_path):
    from components.har.data import clip_rng, render_clip

    manifest, split = bench.render_validation(base, tmp_path / "a", 2, progress=lambda m: None)
    _, again = bench.render_validation(base, tmp_path / "b", 2, progress=lambda m: None)
    classes = base.data.classes
    assert list(split.labels) == [i % len(classes) for i in range(2 * len(classes))]
    assert all(np.array_equal(x, y) for x, y in zip(split.chunks, again.chunks))          # deterministic
    assert [c["path"] for c in manifest["clips"]][0].endswith(".mp4")
    first = np.concatenate(split.chunks[0])                                                # (frames, H, W, 3)
    for name in ("train", "test"):                  # not a data-stage clip: clip 0 of each split differs
        other = render_clip(classes[0], clip_rng(base.seed, name, 0), base.data)
        assert np.abs(first.astype(int) - other.astype(int)).mean() > 10


def test_compare_judges_both_metrics_per_split(bench):
    def acc(online, stream):
        return {"online_accuracy": online, "stream_accuracy": stream}

    committed = {n: {"tvl1": acc(0.5, 0.4), "rgb": acc(0.2, 0.2)} for n in ("validation", "test")}
    row = {"sources": ["tvl1", "rgb"], "validation": {"tvl1": acc(0.6, 0.3), "rgb": acc(0.2, 0.2)},
           "test": {"tvl1": acc(0.4, 0.4), "rgb": acc(0.1, 0.3)}}
    out = bench.compare(committed, row)
    assert out["delta"]["validation"]["online_accuracy"] == pytest.approx({"tvl1": 0.1, "rgb": 0.0})
    assert out["mean_delta"]["validation"]["online_accuracy"] == pytest.approx(0.05)
    assert out["holds"]["validation"] == {"online_accuracy": False, "stream_accuracy": True}
    assert out["mean_delta"]["test"]["online_accuracy"] == pytest.approx(-0.1)
    assert out["mean_delta"]["test"]["stream_accuracy"] == pytest.approx(0.05)
    assert out["holds"]["test"] == {"online_accuracy": True, "stream_accuracy": False}
    line = bench.summary_line({"changes": {"temporal.epochs": 40}, **row, **out})
    assert line.startswith("temporal.epochs=40 vs committed, mean over tvl1, rgb -- validation: online +5.0 pts "
                           "(committed loses), stream -5.0 pts (committed holds); test: online -10.0 pts"), line


def test_end_to_end_on_a_tiny_committed_run(bench, base, params, committed, tmp_path, capsys):
    from components.har import experiment as ex

    out = tmp_path / "r.json"
    rc = bench.main(["--params", str(params), "--root", str(committed), "--clips-per-class", "1",
                     "--alternative", "temporal.epochs=3", "--alternative", "streams.epochs=2", "--out", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["complete"] and r["validation_set"]["clips"] == 4 and r["test_set"]["clips"] == 4
    assert [a["changes"] for a in r["alternatives"]] == [{"temporal.epochs": 3}, {"streams.epochs": 2}]
    assert r["alternatives"][1]["sources"] == ["tvl1", "farneback", "dis", "rgb"]
    # the committed settings on the test split: the evaluate stage's own figures
    manifest, splits, nets, flows, meta = ex.evaluation_inputs(base, committed / "data" / "har",
                                                               committed / "models" / "har", committed / "results" / "har")
    _, per = ex.evaluate_heads(base, manifest["classes"], splits, flows, nets, None, meta)
    for s, d in per.items():
        assert r["committed"]["test"][s]["online_accuracy"] == pytest.approx(d["online_accuracy"])
    for row in r["alternatives"]:
        for name in ("validation", "test"):
            for m in ("online_accuracy", "stream_accuracy"):
                for s in row["sources"]:
                    assert row["delta"][name][m][s] == pytest.approx(row[name][s][m] - r["committed"][name][s][m])
    assert "temporal.epochs=3 vs committed" in capsys.readouterr().out


def test_a_flow_alternative_recomputes_that_flow_for_every_scored_split(bench, params, committed, tmp_path):
    out = tmp_path / "r.json"
    assert bench.main(["--params", str(params), "--root", str(committed), "--clips-per-class", "1",
                       "--alternative", "opticalflow.dis_preset=ultrafast", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["alternatives"]
    assert row["recomputed_flows"] == ["dis"] and row["retrained_stream_cnns"] == ["dis"] and row["sources"] == ["dis"]
    assert set(row["validation"]) == set(row["test"]) == {"dis"}
