"""FamilyCostModel routes every update and prediction to the model of the task's family."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from components.familyseer.cost_model import FamilyCostModel


class RecordingModel:
    """Stands in for an XGBModel: remembers what it was trained on, predicts a constant."""

    def __init__(self, value: float) -> None:
        self.value = value
        self.seen: list[tuple[str, int]] = []

    def update(self, context, candidates, results):
        self.seen.append((context.task_name, len(candidates)))

    def predict(self, context, candidates):
        return np.full(len(candidates), self.value)


@pytest.fixture()
def routed():
    """The Python side of the TVM-derived object (what MetaSchedule's C++ calls back into)."""
    family_of_task = {"fused_conv2d_add_relu": "conv2d", "fused_conv2d1_add1": "conv2d", "fused_matmul_add": "matmul"}
    models = {"conv2d": RecordingModel(1.0), "matmul": RecordingModel(2.0)}
    return FamilyCostModel(family_of_task, models)._inst, models


def ctx(name):
    return SimpleNamespace(task_name=name)


def test_updates_go_to_the_family_model_only(routed):
    fcm, models = routed
    fcm.update(ctx("fused_conv2d_add_relu"), [object()] * 3, [object()] * 3)
    fcm.update(ctx("fused_conv2d1_add1"), [object()] * 2, [object()] * 2)
    fcm.update(ctx("fused_matmul_add"), [object()] * 5, [object()] * 5)
    # both conv tasks train the shared conv model ("purified training samples"); matmul stays apart
    assert models["conv2d"].seen == [("fused_conv2d_add_relu", 3), ("fused_conv2d1_add1", 2)]
    assert models["matmul"].seen == [("fused_matmul_add", 5)]
    assert fcm.updates == {"conv2d": 5, "matmul": 5}


def test_predictions_come_from_the_family_model(routed):
    fcm, _ = routed
    assert fcm.predict(ctx("fused_conv2d1_add1"), [object()] * 4).tolist() == [1.0] * 4
    out = fcm.predict(ctx("fused_matmul_add"), [object()] * 2)
    assert out.dtype == np.float64 and out.tolist() == [2.0, 2.0]


def test_unknown_task_is_an_error(routed):
    fcm, _ = routed
    with pytest.raises(KeyError, match="belongs to no family"):
        fcm.predict(ctx("softmax"), [object()])


def test_every_family_needs_a_model():
    with pytest.raises(ValueError, match=r"no cost model for families \['softmax'\]"):
        FamilyCostModel({"softmax": "softmax"}, {"conv2d": RecordingModel(0.0)})


# --------------------------------------------------------------------------------------------------
# make_xgb: MetaSchedule's XGBModel with the artifact's warm-up rule, trained on synthetic features


class FeatureOfCandidate:
    """Stands in for PerStoreFeature: a candidate is a number x, its features one store row [x, 1]."""

    def extract_from(self, context, candidates):
        import tvm

        return [tvm.runtime.tensor(np.array([[float(c), 1.0]], dtype="float32")) for c in candidates]


def _workload(n=4):
    import tvm
    from tvm import te

    a = te.placeholder((n,), name="A")
    b = te.compute((n,), lambda i: a[i] + 1.0, name="B")
    return tvm.IRModule({"main": te.create_prim_func([a, b])})


def _xgb(cfg=None, members=2, trials_per_round=2):
    from components.familyseer.config import CostModelConfig
    from components.familyseer.cost_model import make_xgb

    model = make_xgb(cfg or CostModelConfig(), members=members, trials_per_round=trials_per_round, threads=1)._inst
    model.extractor = FeatureOfCandidate()
    return model


def _ms(*latencies_ms):
    from tvm.s_tir.meta_schedule.runner import RunnerResult

    return [RunnerResult([ms / 1e3], None) for ms in latencies_ms]


def test_the_warm_up_is_members_x_trials_per_round_x_rounds():
    from components.familyseer.config import CostModelConfig

    assert _xgb(CostModelConfig(warmup_rounds_per_task=1), members=3, trials_per_round=2).num_warmup_samples == 6
    assert _xgb(CostModelConfig(warmup_rounds_per_task=2), members=3, trials_per_round=4).num_warmup_samples == 24


def test_early_stopping_and_adaptive_training_reach_the_model():
    from components.familyseer.config import CostModelConfig

    on = _xgb(CostModelConfig(early_stopping_rounds=7, adaptive_training=True))
    assert on.early_stopping_rounds == 7 and on.adaptive_training is True
    off = _xgb(CostModelConfig(early_stopping_rounds=9, adaptive_training=False))
    assert off.early_stopping_rounds == 9 and off.adaptive_training is False


def test_the_model_first_trains_once_it_holds_its_warm_up_samples():
    model = _xgb(members=2, trials_per_round=2)
    assert model.num_warmup_samples == 4
    ctx = SimpleNamespace(mod=_workload())
    model.update(ctx, [1, 2], _ms(21, 22))
    assert model.booster is None
    model.update(ctx, [3], _ms(23))
    assert model.data_size == 3 and model.booster is None      # 3 < 4: still warming up
    model.update(ctx, [4], _ms(24))
    assert model.data_size == 4 and model.booster is not None  # 4 samples: trained


def test_the_family_model_learns_which_candidates_are_fast():
    """Run time grows with the feature x: trained on even x, the model must rank odd x (held out) by
    speed far better than chance (0.5; a model still predicting at random scores about that)."""
    from components.familyseer.analysis import pairwise_accuracy

    model = _xgb(members=2, trials_per_round=2)
    ctx = SimpleNamespace(mod=_workload())
    xs = np.arange(1, 41)
    train, held = xs[::2], xs[1::2]
    model.update(ctx, list(train), _ms(*(20.0 + x for x in train)))
    assert model.booster is not None
    correct, pairs = pairwise_accuracy(model.predict(ctx, list(held)), [20.0 + x for x in held])
    assert pairs == 190 and correct / pairs >= 0.9


def test_the_feature_context_follows_the_tasks_module_not_only_its_name():
    """The extractor keeps one TuneContext per task name; a context of the same name on another module
    (a new tuning run's task) must get a context of that module, not the cached one."""
    import tvm

    from components.familyseer.cost_model import store_features

    extractor = store_features(1)._inst
    target = tvm.target.Target("llvm")
    small, large = _workload(4), _workload(8)
    first = extractor._context(SimpleNamespace(task_name="t", mod=small, target=target))
    assert first.mod.same_as(small)
    assert extractor._context(SimpleNamespace(task_name="t", mod=small, target=target)) is first  # reused
    second = extractor._context(SimpleNamespace(task_name="t", mod=large, target=target))
    assert second is not first and second.mod.same_as(large)


class PathModel(RecordingModel):
    """Remembers the paths it was saved to and loaded from."""

    def __init__(self, value: float, log: list) -> None:
        super().__init__(value)
        self.log = log

    def save(self, path):
        self.log.append(("save", self.value, path))

    def load(self, path):
        self.log.append(("load", self.value, path))


def test_load_reads_each_family_model_from_where_save_wrote_it(tmp_path):
    log: list = []
    models = {"conv2d": PathModel(1.0, log), "matmul": PathModel(2.0, log)}
    fcm = FamilyCostModel({"a": "conv2d", "b": "matmul"}, models)._inst
    fcm.save(str(tmp_path / "models"))
    assert (tmp_path / "models").is_dir()
    saved = [(value, path) for op, value, path in log if op == "save"]
    assert len(saved) == 2 and len({p for _, p in saved}) == 2   # one file per family
    log.clear()
    fcm.load(str(tmp_path / "models"))
    assert [(value, path) for op, value, path in log if op == "load"] == saved
