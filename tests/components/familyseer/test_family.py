"""Family grouping (the artifact's make_family_group) on the task descriptions of a real, tiny CNN."""
from __future__ import annotations

import pytest

from components.base import ConfigError
from components.familyseer.family import family_key, family_of, make_family_group
from components.familyseer.zoo import split_ops

# a slice of Relax's operator names (tvm.ir.Op.list_op_names() without the "relax[.nn]." prefix)
VOCAB = frozenset({"conv2d", "conv2d_transpose", "add", "relu", "matmul", "softmax", "layer_norm", "mean",
                   "reshape", "broadcast_to", "instance_norm", "greater", "multiply", "where", "take", "gelu"})


@pytest.mark.parametrize("name, ops", [
    ("fused_conv2d1_add1_relu1", ["conv2d", "add", "relu"]),
    ("fused_conv2d_transpose1_add6", ["conv2d_transpose", "add"]),
    ("fused_matmul3_add2", ["matmul", "add"]),
    ("matmul1", ["matmul"]),
    ("layer_norm", ["layer_norm"]),
    ("fused_softmax_broadcast_to3", ["softmax", "broadcast_to"]),
    ("fused_instance_norm3_greater3_multiply3_where3", ["instance_norm", "greater", "multiply", "where"]),
    ("mean", ["mean"]),
])
def test_split_ops_parses_multiword_operator_names(name, ops):
    assert split_ops(name, VOCAB) == ops


def _tiny_cnn():
    """Stem conv, depthwise conv, strided conv, conv with an identity shortcut, mean pooling, linear:
    the task kinds of the zoo's CNNs (``zoo.py``) at toy size."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, 1, 1)
            self.dw = nn.Conv2d(8, 8, 3, 1, 1, groups=8)
            self.down = nn.Conv2d(8, 16, 3, 2, 1)
            self.conv = nn.Conv2d(16, 16, 3, 1, 1)
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            x = torch.relu(self.dw(torch.relu(self.stem(x))))
            x = torch.relu(self.down(x))
            x = torch.relu(self.conv(x) + x)
            return self.fc(x.mean(dim=(2, 3)))

    torch.manual_seed(0)
    return Net().eval(), (torch.randn(1, 3, 8, 8),)


@pytest.fixture(scope="module")
def tasks():
    """The data stage's task descriptions (``zoo.describe_task`` on the tasks MetaSchedule extracts)."""
    from dataclasses import asdict

    from components.familyseer.zoo import extract_tasks, make_target, to_relax

    module, inputs = _tiny_cnn()
    _, infos = extract_tasks(to_relax(module, inputs), make_target(2), complex_only=True)
    return [asdict(i) for i in infos]


def _by_anchor(tasks, anchor):
    return [t for t in tasks if t["anchor"] == anchor]


def test_describe_task_derives_the_core_operator_and_the_group_conv2d_rule(tasks):
    assert all(t["complex"] and t["anchor"] and t["structural_hash"] for t in tasks)
    assert sorted(t["core_op"] for t in tasks) == ["conv2d", "conv2d", "conv2d", "group_conv2d", "matmul", "mean"]
    for t in tasks:
        assert t["ops"] and t["ops"][0] in t["name"]                      # parsed from the Relax name
    # the depthwise conv's name reads as a plain conv2d: only its anchor block makes it group_conv2d
    (dw,) = _by_anchor(tasks, "group_conv2d_nchw")
    assert dw["ops"][0] == "conv2d" and dw["core_op"] == "group_conv2d"
    assert {t["core_op"] for t in _by_anchor(tasks, "conv2d_nchw")} == {"conv2d"}


def test_op_policy_groups_by_core_operator(tasks):
    groups = make_family_group(tasks, "op")
    assert sorted(groups) == ["conv2d", "group_conv2d", "matmul", "mean"]
    assert sorted(tasks[i]["anchor"] for i in groups["conv2d"]) == ["conv2d_nchw"] * 3
    assert [tasks[i]["anchor"] for i in groups["group_conv2d"]] == ["group_conv2d_nchw"]


def test_hash_policy_is_finer_than_op_policy(tasks):
    groups = make_family_group(tasks, "hash")
    # stem and strided conv: the same operator sequence (conv, bias, relu) at different shapes
    shared = [members for members in groups.values() if len(members) > 1]
    assert len(shared) == 1 and len(shared[0]) == 2
    assert len({tasks[i]["structural_hash"] for i in shared[0]}) == 2
    assert len(groups) == len(tasks) - 1
    op_of = family_of(make_family_group(tasks, "op"))
    for members in groups.values():                  # every hash family sits inside one op family
        assert len({op_of[i] for i in members}) == 1


def test_ind_policy_is_one_family_per_task(tasks):
    groups = make_family_group(tasks, "ind")
    assert sorted(len(v) for v in groups.values()) == [1] * len(tasks)


def test_every_task_in_exactly_one_family(tasks):
    for grouping in ("op", "hash", "ind"):
        members = sorted(i for v in make_family_group(tasks, grouping).values() for i in v)
        assert members == list(range(len(tasks)))


def test_unknown_grouping_is_a_config_error():
    with pytest.raises(ConfigError, match="'op', 'hash', 'ind'"):
        family_key({"name": "matmul", "core_op": "matmul", "subgraph_hash": "h"}, "shape")  # type: ignore[arg-type]


def test_families_are_listed_in_first_appearance_order():
    tasks = [{"core_op": "matmul"}, {"core_op": "conv2d"}, {"core_op": "matmul"}]
    groups = make_family_group(tasks, "op")
    assert list(groups) == ["matmul", "conv2d"]           # not sorted: the order tasks first name them
    assert groups == {"matmul": [0, 2], "conv2d": [1]}
