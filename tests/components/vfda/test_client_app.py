"""The ClientApp reports how many examples it trained / evaluated on: the weight FedAvg gives its reply.

The data loading, local training and Dice evaluation are replaced by stubs (their own tests cover
them); the handlers run through the real ClientApp with a real (tiny) model."""
from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from components.vfda.config import VfdaConfig
from components.vfda.strategy import CLIENT_INFO

pytestmark = pytest.mark.usefixtures("task_identity")

CFG = VfdaConfig.model_validate({"model": {"channels": [4, 8, 16]}})


def _call(kind: str, federation: str, tmp_path: Path, node_id: int = 1) -> Message:
    import torch

    from components.vfda.client_app import app
    from components.vfda.model import build_model, weights

    torch.manual_seed(0)
    model = build_model(CFG.model, CFG.data.num_classes, CFG.vfda)
    conf = ConfigRecord({"federation": federation, "settings": CFG.model_dump_json(), "data-dir": str(tmp_path),
                         "server-round": 1})
    msg = Message(RecordDict({"arrays": ArrayRecord(weights(model)), "config": conf}), node_id, kind)
    msg.metadata.__dict__["_message_id"] = f"{kind}-1"
    msg.metadata.__dict__["_src_node_id"] = 0
    ctx = Context(run_id=1, node_id=node_id, state=RecordDict(), run_config={},
                  node_config={"datalist": str(tmp_path / "A" / "datalist.json"), "institute": "A"})
    return app(msg, ctx)


@pytest.fixture
def stubs(monkeypatch):
    """Training split of 3 volumes, validation split of 2; training and evaluation stubbed."""
    import components.vfda.data as data
    import components.vfda.training as training

    seen = {}

    def load_split(datalist, split, cfg):
        return [(split, i) for i in range({"training": 3, "validation": 2}[split])]

    def train_local(model, data, **kw):
        seen["train"] = len(data)
        return {"train_loss": 0.25}

    def evaluate_dice(model, data, num_classes):
        seen["evaluate"] = len(data)
        return {"dice": 0.5}

    monkeypatch.setattr(data, "load_split", load_split)
    monkeypatch.setattr(training, "train_local", train_local)
    monkeypatch.setattr(training, "evaluate_dice", evaluate_dice)
    return seen


@pytest.mark.parametrize("federation", ["fedavg-base-s0", "fedavg-vfda-s0"])
def test_train_reply_reports_the_size_of_the_local_training_split(stubs, tmp_path, federation):
    reply = _call("train", federation, tmp_path)
    assert not reply.has_error(), reply.error
    assert stubs["train"] == 3
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == 3 and metrics["train-loss"] == 0.25
    assert reply.content[CLIENT_INFO]["institute"] == "A"


def test_evaluate_reply_reports_the_size_of_the_local_validation_split(stubs, tmp_path):
    reply = _call("evaluate", "fedavg-base-s0", tmp_path)
    assert not reply.has_error(), reply.error
    assert stubs["evaluate"] == 2
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == 2 and metrics["dice"] == 0.5
