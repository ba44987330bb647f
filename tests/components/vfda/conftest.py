"""Shared by the VFDA server-side tests: a Flower task identity and an in-process grid stub."""
from __future__ import annotations

import pytest
from flwr.serverapp import Grid


@pytest.fixture
def task_identity():
    """Messages need a task identity (a Flower runtime sets it; here the test does)."""
    from flwr.supercore.task_identity import TaskIdentity

    old = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = old


class FakeGrid(Grid):
    """A grid of ``nodes`` that answers nothing; subclasses script ``send_and_receive``."""

    def __init__(self, nodes):
        self.nodes = nodes

    def set_run(self, run):
        pass

    @property
    def run(self):
        return None

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        raise NotImplementedError

    def get_node_ids(self):
        return list(self.nodes)

    def push_messages(self, messages):
        return []

    def pull_messages(self, message_ids):
        return []

    def send_and_receive(self, messages, *, timeout=None):
        return []
