"""Subgraph families: FamilySeer's static grouping of tuning tasks (``make_family_group`` in the artifact).

Three grouping policies, as in ``familyseer_AE/python/tvm/auto_scheduler/task_scheduler.py``:

- ``op`` (the paper's recommended policy): key = the first, *core* operator of the fused subgraph
  (artifact: ``task.desc.split('_')[1]``, e.g. ``nn.conv2d``, ``nn.dense``, ``nn.softmax``). Here the
  Relax task name is parsed into operators (``fused_conv2d1_add1_relu1`` -> ``conv2d``); grouped and
  depthwise convolutions get their own family (``group_conv2d``), as the artifact's
  ``nn.depthwiseconv2d`` family.
- ``hash``: key = a hash of the subgraph's operation sequence (artifact: the MD5 part of Ansor's workload
  key). Here: MD5 of the TIR block sequence with iteration kinds (``pad_temp:SSSS|conv2d_nchw:SSSSRRR|
  T_add:SSSS|compute:SSSS``) — same operators and fusion pattern, any shapes.
- ``ind``: one family per task (FamilySeer's machinery with per-task cost models).
"""
from __future__ import annotations

from typing import Literal, Mapping, Sequence

from components.base import ConfigError

Grouping = Literal["op", "hash", "ind"]


def family_key(task: Mapping[str, object], grouping: Grouping) -> str:
    """The family key of one task description (a :class:`zoo.TaskInfo` as a dict)."""
    if grouping == "op":
        return str(task["core_op"])
    if grouping == "hash":
        return str(task["subgraph_hash"])
    if grouping == "ind":
        return str(task["name"])
    raise ConfigError(f"family grouping {grouping!r}: expected one of 'op', 'hash', 'ind'")


def make_family_group(tasks: Sequence[Mapping[str, object]], grouping: Grouping) -> dict[str, list[int]]:
    """``{family key: [task indices]}`` in first-appearance order (the artifact's ``family_group``)."""
    groups: dict[str, list[int]] = {}
    for idx, task in enumerate(tasks):
        groups.setdefault(family_key(task, grouping), []).append(idx)
    return groups


def family_of(groups: Mapping[str, Sequence[int]]) -> dict[int, str]:
    """Inverse map: task index -> family key."""
    return {i: key for key, members in groups.items() for i in members}
