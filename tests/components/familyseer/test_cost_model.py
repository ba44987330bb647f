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
