"""Family grouping on known MetaSchedule/Relax task names (the artifact's make_family_group)."""
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


def _task(name, core, hsh):
    return {"name": name, "core_op": core, "subgraph_hash": hsh}


TASKS = [  # the resnet_tiny tasks as the data stage describes them
    _task("fused_matmul_add2", "matmul", "h_mm"),
    _task("mean", "mean", "h_mean"),
    _task("fused_conv2d2_add1_add2_relu1", "conv2d", "h_conv_res"),
    _task("fused_conv2d3_add1", "conv2d", "h_conv_bias"),
    _task("fused_conv2d1_add1_relu1", "conv2d", "h_conv_relu"),
    _task("fused_conv2d_add_relu", "conv2d", "h_conv_relu"),
]


def test_op_policy_groups_by_core_operator():
    groups = make_family_group(TASKS, "op")
    assert groups == {"matmul": [0], "mean": [1], "conv2d": [2, 3, 4, 5]}


def test_hash_policy_is_finer_than_op_policy():
    groups = make_family_group(TASKS, "hash")
    assert groups["h_conv_relu"] == [4, 5]           # same operator sequence, different shapes
    assert len(groups) == 5
    op_of = family_of(make_family_group(TASKS, "op"))
    for members in groups.values():                  # every hash family sits inside one op family
        assert len({op_of[i] for i in members}) == 1


def test_ind_policy_is_one_family_per_task():
    groups = make_family_group(TASKS, "ind")
    assert sorted(len(v) for v in groups.values()) == [1] * len(TASKS)


def test_every_task_in_exactly_one_family():
    for grouping in ("op", "hash", "ind"):
        members = sorted(i for v in make_family_group(TASKS, grouping).values() for i in v)
        assert members == list(range(len(TASKS)))


def test_unknown_grouping_is_a_config_error():
    with pytest.raises(ConfigError, match="'op', 'hash', 'ind'"):
        family_key(TASKS[0], "shape")  # type: ignore[arg-type]
