"""Local training: every MixUp step mixes two *different* volumes, and a batch never repeats a
volume, also across an epoch boundary (review findings: at batch size 2 a permutation is the
identity half the time, and a volume left over at the end of an epoch could meet itself)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from components.vfda import training
from components.vfda.training import train_local


class Recorder(nn.Module):
    """A 1x1x1 convolution that keeps every input batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 3, 1)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.conv(x)


def _volumes(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Volume ``i`` is the constant ``i + 1`` (identifiable, unchanged by the random flips)."""
    return [(torch.full((1, 4, 4, 4), float(i + 1)), torch.zeros((1, 4, 4, 4), dtype=torch.long)) for i in range(n)]


@pytest.fixture
def batches(monkeypatch):
    """The volume indices of every batch ``train_local`` draws, in order."""
    seen: list[list[int]] = []
    real = training._batch

    def spy(data, idx, rng):
        seen.append([int(i) for i in idx])
        return real(data, idx, rng)

    monkeypatch.setattr(training, "_batch", spy)
    return seen


def test_mixup_at_batch_size_2_mixes_two_different_volumes_every_step(batches):
    # Beta(100, 100) keeps lambda in ~[0.35, 0.65], so a mix of two different constant volumes is at
    # least 0.35 away from either volume; mixing a volume with itself leaves it unchanged.
    steps = 0
    for seed in range(25):
        model = Recorder()
        batches.clear()
        train_local(model, _volumes(10), steps=8, batch_size=2, lr=1e-3, seed=seed, mixup_alpha=100.0)
        assert len(model.seen) == len(batches) == 8
        for idx, x in zip(batches, model.seen):
            clean = torch.tensor([i + 1.0 for i in idx])
            mixed = x.flatten(1)[:, 0]
            assert (mixed - clean).abs().min() > 0.3, (seed, idx, mixed.tolist())
            # both samples are mixes of the same two volumes: the batch sum is preserved
            assert float(mixed.sum()) == pytest.approx(float(clean.sum()), abs=1e-4)
            steps += 1
    assert steps == 200


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 7])
def test_mixup_partner_is_always_another_sample(batch_size):
    rng = np.random.default_rng(0)
    for _ in range(200):
        partner = training.mixup_partners(batch_size, rng)
        assert sorted(partner.tolist()) == list(range(batch_size))  # a permutation of the batch
        if batch_size == 1:
            assert partner.tolist() == [0]  # no partner: the sample is left unmixed
        else:
            assert all(partner != np.arange(batch_size))


@pytest.mark.parametrize("n,batch_size", [(9, 2), (3, 2), (5, 4), (10, 3)])
def test_a_batch_never_repeats_a_volume_and_epochs_cover_every_volume(batches, n, batch_size):
    steps = 5 * n  # 5 * batch_size epochs
    for seed in range(10):
        batches.clear()
        train_local(Recorder(), _volumes(n), steps=steps, batch_size=batch_size, lr=1e-3, seed=seed)
        assert len(batches) == steps
        for idx in batches:
            assert len(set(idx)) == batch_size, (seed, idx)
        counts = np.bincount([i for idx in batches for i in idx], minlength=n)
        assert counts.tolist() == [steps * batch_size // n] * n  # every volume equally often


def test_next_epoch_moves_only_the_conflicting_volumes_and_is_deterministic():
    a = training.next_epoch(9, [4], 2, np.random.default_rng(7))
    b = training.next_epoch(9, [4], 2, np.random.default_rng(7))
    plain = [int(i) for i in np.random.default_rng(7).permutation(9)]
    assert a == b and sorted(a) == list(range(9)) and a[0] != 4
    if plain[0] != 4:
        assert a == plain  # no conflict: the permutation is used as drawn
