"""The ServerApp's federation loop on an in-process grid: a federation in which no round aggregates
is a failed run with a clear error (Flower would hand back an empty model), and a round with too few
replies keeps the previous global model."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import Error, Message, MessageType, MetricRecord, RecordDict

from components.vfda.config import VfdaConfig
from components.vfda.federation import Federation, RunSettings
from components.vfda.server_app import FederationError, run_federation
from tests.components.vfda.conftest import FakeGrid


pytestmark = pytest.mark.usefixtures("task_identity")


class ScriptedGrid(FakeGrid):
    """Nodes that crash in the rounds listed in ``crash_rounds`` and otherwise send the model back
    unchanged (train) or fail (evaluate: not needed here)."""

    def __init__(self, nodes: list[int], crash_rounds: set[int]) -> None:
        super().__init__(nodes)
        self.crash_rounds, self.train_round, self.sent = crash_rounds, 0, 0

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        is_train = bool(messages) and messages[0].metadata.message_type == MessageType.TRAIN
        self.train_round += is_train
        replies = []
        for msg in messages:
            self.sent += 1
            msg.metadata.__dict__["_message_id"] = f"m{self.sent}"
            if is_train and self.train_round not in self.crash_rounds:
                content = RecordDict({"arrays": msg.content["arrays"],
                                      "metrics": MetricRecord({"num-examples": 1, "train-loss": 0.5})})
                replies.append(Message(content, reply_to=msg))
            else:
                replies.append(Message(Error(code=0, reason="Traceback ...\nRuntimeError: injected crash"),
                                       reply_to=msg))
        return replies


def _settings(tmp_path: Path, num_rounds: int) -> RunSettings:
    cfg = VfdaConfig.model_validate({"model": {"channels": [4, 8, 16]},
                                     "federation": {"num_rounds": num_rounds, "min_train_clients": 2}})
    return RunSettings(config=cfg, data_dir=tmp_path / "data", out_dir=tmp_path / "out")


def test_a_federation_that_never_aggregates_fails_clearly_and_writes_nothing(tmp_path):
    settings = _settings(tmp_path, num_rounds=2)
    fed = Federation("fedprox", "vfda", 1)
    with pytest.raises(FederationError) as err:
        run_federation(ScriptedGrid([1, 2, 3], crash_rounds={1, 2}), fed, settings, 3, heldout={})
    msg = str(err.value)
    for part in ("fedprox-vfda-s1", "strategy=fedprox", "variant=vfda", "seed=1", "none of its 2 round(s) aggregated",
                 "min_train_clients=2", "[0, 0]", "injected crash"):
        assert part in msg, (part, msg)
    assert not (settings.out_dir / "federations" / fed.id).exists()  # no empty global.pt, no record


def test_a_round_with_too_few_replies_keeps_the_previous_model(tmp_path):
    settings = _settings(tmp_path, num_rounds=2)
    fed = Federation("fedavg", "base", 0)
    record = run_federation(ScriptedGrid([1, 2, 3], crash_rounds={1}), fed, settings, 3, heldout={})
    assert [r["aggregated"] for r in record["rounds"]] == [False, True]
    state = torch.load(settings.out_dir / "federations" / fed.id / "global.pt", weights_only=True)
    from components.vfda.server_app import _initial_model

    initial = _initial_model(settings, fed).state_dict()
    assert state.keys() == initial.keys() and len(state) > 0
    assert all(torch.allclose(state[k].float(), initial[k].float(), atol=1e-6) for k in state)  # sent back unchanged
