"""Server-side aggregation: VFDA statistics are taken out of the replies and turned into the global
variance (never averaged as weights), the variance goes out with the next round, FedBN marks its
messages, and a failed client is logged while the round aggregates the rest (or, with too few
replies, keeps the previous model)."""
from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from components.vfda.federation import Federation
from components.vfda.strategy import CLIENT_INFO, VFDA_GLOBAL, VFDA_STATS, make_strategy
from tests.components.vfda.conftest import FakeGrid


pytestmark = pytest.mark.usefixtures("task_identity")


def _arrays(value: float) -> ArrayRecord:
    return ArrayRecord({"enc.weight": Array(np.full(3, value, np.float32))})


def _reply(ins: Message, institute: str, value: float, mu: list[float] | None, num_examples: int = 1) -> Message:
    content = RecordDict({"arrays": _arrays(value),
                          "metrics": MetricRecord({"num-examples": num_examples, "train-loss": value}),
                          CLIENT_INFO: ConfigRecord({"institute": institute, "partition-id": 0})})
    if mu is not None:
        content[VFDA_STATS] = ArrayRecord({"enc.0.running_mu": Array(np.array(mu, np.float32)),
                                           "enc.0.running_sigma": Array(np.ones(2, np.float32))})
    return Message(content, reply_to=ins)


def _configure(strategy, server_round, nodes):
    msgs = list(strategy.configure_train(server_round, _arrays(0.0), ConfigRecord({}), FakeGrid(nodes)))
    for i, m in enumerate(msgs):
        m.metadata.__dict__["_message_id"] = f"m{server_round}-{i}"
    return sorted(msgs, key=lambda m: m.metadata.dst_node_id)


def test_vfda_statistics_are_exchanged_not_averaged():
    strategy = make_strategy(Federation("fedavg", "vfda", 0), num_clients=3, min_train_clients=2, proximal_mu=0.01)
    msgs = _configure(strategy, 1, [11, 12, 13])
    assert len(msgs) == 3 and all(VFDA_GLOBAL not in m.content for m in msgs)  # nothing known yet
    replies = [_reply(msgs[0], "A", 1.0, [0.0, 1.0]), _reply(msgs[1], "B", 3.0, [2.0, 1.0]),
               Message(Error(code=0, reason="client crashed"), reply_to=msgs[2])]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["enc.weight"].numpy(), np.full(3, 2.0))   # weights: FedAvg mean
    assert set(arrays) == {"enc.weight"}                                        # statistics: not weights
    rec = strategy.rounds[1]
    assert rec["aggregated"] and set(rec["train"]) == {"A", "B"}
    assert len(rec["failures"]) == 1 and rec["failures"][0]["reason"] == "client crashed"
    nxt = _configure(strategy, 2, [11, 12, 13])
    var = nxt[0].content[VFDA_GLOBAL]                                           # Eq. 4 goes out next round
    np.testing.assert_allclose(var["enc.0.global_var_mu"].numpy(), [1.0, 0.0])  # var of {0, 2} and {1, 1}
    np.testing.assert_allclose(var["enc.0.global_var_sigma"].numpy(), [0.0, 0.0])


@pytest.mark.parametrize("strategy_name,variant", [("fedavg", "base"), ("fedprox", "base"), ("fedbn", "base"),
                                                   ("fedavg", "vfda")])
def test_weights_and_metrics_are_averaged_by_each_clients_number_of_examples(strategy_name, variant):
    """FedAvg weights every client by the ``num-examples`` it reports: 1 example of value 1.0 and 3
    examples of value 3.0 average to (1*1 + 3*3) / 4 = 2.5 (an unweighted mean would give 2.0),
    the weights and the train loss alike; evaluation metrics too."""
    strategy = make_strategy(Federation(strategy_name, variant, 0), num_clients=2, min_train_clients=2,
                             proximal_mu=0.01, norm_keys=["enc.weight"])
    msgs = _configure(strategy, 1, [11, 12])
    mu = [0.0, 1.0] if variant == "vfda" else None
    arrays, metrics = strategy.aggregate_train(1, [_reply(msgs[0], "A", 1.0, mu, num_examples=1),
                                                   _reply(msgs[1], "B", 3.0, mu, num_examples=3)])
    np.testing.assert_allclose(arrays["enc.weight"].numpy(), np.full(3, 2.5), rtol=1e-6)
    assert metrics["train-loss"] == pytest.approx(2.5)
    ev = list(strategy.configure_evaluate(1, _arrays(0.0), ConfigRecord({}), FakeGrid([11, 12])))
    for i, m in enumerate(ev):
        m.metadata.__dict__["_message_id"] = f"e{i}"
    ev.sort(key=lambda m: m.metadata.dst_node_id)
    got = strategy.aggregate_evaluate(1, [
        Message(RecordDict({"metrics": MetricRecord({"num-examples": n, "dice": d}),
                            CLIENT_INFO: ConfigRecord({"institute": name})}), reply_to=m)
        for m, name, n, d in zip(ev, "AB", (3, 1), (0.2, 0.6))])
    assert got["dice"] == pytest.approx((3 * 0.2 + 1 * 0.6) / 4)


def test_too_few_replies_keep_the_previous_model():
    strategy = make_strategy(Federation("fedprox", "base", 0), num_clients=3, min_train_clients=2, proximal_mu=0.1)
    msgs = _configure(strategy, 1, [1, 2, 3])
    assert msgs[0].content["config"]["proximal-mu"] == 0.1
    replies = [_reply(msgs[0], "A", 1.0, None)] + [Message(Error(code=0, reason="down"), reply_to=m) for m in msgs[1:]]
    assert strategy.aggregate_train(1, replies) == (None, None)
    assert not strategy.rounds[1]["aggregated"] and len(strategy.rounds[1]["failures"]) == 2


def test_fedbn_marks_messages_and_keeps_last_client_norms():
    strategy = make_strategy(Federation("fedbn", "base", 0), num_clients=2, min_train_clients=1, proximal_mu=0.0,
                             norm_keys=["enc.weight"])
    msgs = _configure(strategy, 1, [1, 2])
    assert all(m.content["config"]["fedbn"] for m in msgs)
    strategy.aggregate_train(1, [_reply(msgs[0], "A", 1.0, None), _reply(msgs[1], "B", 5.0, None)])
    np.testing.assert_allclose(strategy.client_norms["B"]["enc.weight"], np.full(3, 5.0))


def test_initial_model_is_seeded_even_while_another_lane_builds_models():
    """Two lanes run federations in threads of one ServerApp process: a lane building its held-out
    evaluator must not draw from the global RNG between another lane's seeding and its init."""
    import threading
    from pathlib import Path

    import torch

    from components.vfda.config import VfdaConfig
    from components.vfda.federation import RunSettings
    from components.vfda.server_app import _initial_model, _scratch_model

    cfg = VfdaConfig.model_validate({"model": {"channels": [4, 8, 16]}})
    settings = RunSettings(config=cfg, data_dir=Path("."), out_dir=Path("."))
    fed = Federation("fedavg", "base", 3)
    ref = [p.detach().clone() for p in _initial_model(settings, fed).parameters()]
    stop = threading.Event()

    def other_lane():
        while not stop.is_set():
            _scratch_model(settings)

    t = threading.Thread(target=other_lane, daemon=True)
    t.start()
    try:
        for _ in range(20):
            got = list(_initial_model(settings, fed).parameters())
            assert all(torch.equal(a, b) for a, b in zip(ref, got))
    finally:
        stop.set()
        t.join()


def test_table_labels_name_the_rule_each_variant_ran_with():
    """The ablation variants force a rule: their labels must not show the configured one."""
    from components.vfda.config import VfdaConfig
    from components.vfda.evaluation import variant_label
    from components.vfda.federation import Federation

    cfg = VfdaConfig()                                  # vfda.rule = product
    for variant, want in [("vfda", "FedAvg + VFDA (product)"), ("vfda-fedfa", "FedAvg + VFDA (fedfa)"),
                          ("vfda-product", "FedAvg + VFDA (product)"),
                          ("vfda-local", "FedAvg + VFDA (local only, product)"), ("base", "FedAvg")]:
        fed = Federation("fedavg", variant, 0)
        assert variant_label("fedavg", variant, cfg.vfda.rule) == want
        assert variant_label("fedavg", variant, fed.vfda_rule(cfg)) == want


def test_a_client_that_never_replies_is_recorded_and_logged(caplog):
    """The grid returns without a node's reply after round_timeout_s (a hung client, a lost
    SuperNode): the node is recorded as failed and logged, in train and in evaluate."""
    import logging

    strategy = make_strategy(Federation("fedavg", "vfda", 0), num_clients=3, min_train_clients=2, proximal_mu=0.0,
                             round_timeout_s=5.0)
    msgs = _configure(strategy, 1, [11, 12, 13])
    with caplog.at_level(logging.WARNING, logger="paperworks.vfda.strategy"):
        arrays, _ = strategy.aggregate_train(1, [_reply(msgs[0], "A", 1.0, [0.0, 1.0]),
                                                 Message(Error(code=0, reason="client crashed"), reply_to=msgs[1])])
    rec = strategy.rounds[1]
    assert arrays is None and not rec["aggregated"] and set(rec["train"]) == {"A"}   # 1 < min_train_clients
    assert sorted((f["node"], f["reason"]) for f in rec["failures"]) == [
        (12, "client crashed"), (13, "no reply within round_timeout_s=5")]
    assert any("node 13" in r.getMessage() and "no reply within round_timeout_s=5" in r.getMessage()
               for r in caplog.records)

    ev = list(strategy.configure_evaluate(1, _arrays(0.0), ConfigRecord({}), FakeGrid([11, 12, 13])))
    for i, m in enumerate(ev):
        m.metadata.__dict__["_message_id"] = f"e{i}"
    answered = [m for m in ev if m.metadata.dst_node_id != 12]
    strategy.aggregate_evaluate(1, [Message(RecordDict({"metrics": MetricRecord({"num-examples": 1, "dice": 0.5}),
                                                        CLIENT_INFO: ConfigRecord({"institute": f"I{m.metadata.dst_node_id}"})}),
                                            reply_to=m) for m in answered])
    assert [(f["phase"], f["node"]) for f in rec["failures"] if f["phase"] == "evaluate"] == [("evaluate", 12)]
    assert set(rec["evaluate"]) == {"I11", "I13"}

    # every node replied: nothing recorded
    msgs2 = _configure(strategy, 2, [11, 12, 13])
    strategy.aggregate_train(2, [_reply(m, n, 1.0, [0.0, 1.0]) for m, n in zip(msgs2, "ABC")])
    assert strategy.rounds[2]["failures"] == [] and strategy.rounds[2]["aggregated"]
