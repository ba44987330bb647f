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
    # seed 0: the permutation starts with the pending volume 4, so the conflict branch must move it
    plain = [int(i) for i in np.random.default_rng(0).permutation(9)]
    assert plain[:2] == [4, 5]
    a = training.next_epoch(9, [4], 2, np.random.default_rng(0))
    assert a == training.next_epoch(9, [4], 2, np.random.default_rng(0))   # deterministic
    assert a == [5, 4] + plain[2:]   # the first non-pending index moves to the front, the rest keep their order
    # two pending volumes of a batch of 3: only one new index is needed, and it is not 4 or 5
    b = training.next_epoch(9, [4, 5], 3, np.random.default_rng(0))
    assert b[0] == 2 and b[1:] == [4, 5, 6, 3, 8, 7, 0, 1] and sorted(b) == list(range(9))
    # seed 7: no conflict, the permutation is used as drawn (same RNG stream as a plain permutation)
    plain7 = [int(i) for i in np.random.default_rng(7).permutation(9)]
    assert plain7[0] != 4
    assert training.next_epoch(9, [4], 2, np.random.default_rng(7)) == plain7


def _vfda_net():
    from components.vfda.config import ModelConfig
    from components.vfda.model import build_model
    from components.vfda.vfda import configure_vfda

    net = build_model(ModelConfig(channels=[4, 8, 16]), num_classes=3, seed=0)
    configure_vfda(net, enabled=True, rule="product")
    return net


def _tiny_data(n=4):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(1, 16, 16, 16, generator=g), torch.randint(0, 3, (1, 16, 16, 16), generator=g))
            for _ in range(n)]


def _train(net, data, out, key, seed):
    train_local(net, data, steps=3, batch_size=2, lr=1e-2, seed=seed)
    out[key] = [p.detach().clone() for p in net.parameters()]


def test_local_training_draws_nothing_from_the_global_rng_even_beside_other_threads():
    """Lanes train in threads of one process: VFDA's draws come from generators seeded by
    train_local, so neither the global RNG's state nor another thread drawing from it changes a
    result; and the draws equal those of torch.manual_seed(seed) (the Ray runtime's, one process
    per client), so results computed before the generators were introduced are reproduced."""
    import threading

    from components.vfda.vfda import seeded_draws, vfda_layers

    torch.set_num_threads(1)
    data = _tiny_data()
    ref: dict = {}
    torch.manual_seed(123)
    _train(_vfda_net(), data, ref, "a", seed=7)
    torch.manual_seed(456)
    _train(_vfda_net(), data, ref, "b", seed=7)
    assert all(torch.equal(x, y) for x, y in zip(ref["a"], ref["b"]))

    got: dict = {}
    stop = threading.Event()

    def noise():
        while not stop.wait(0.001):
            torch.manual_seed(99)
            torch.rand(64)

    nets = {k: _vfda_net() for k in ("x", "y")}  # built before: a build is seeded under model.BUILD_LOCK
    threads = [threading.Thread(target=noise, daemon=True)] + [
        threading.Thread(target=_train, args=(nets[k], data, got, k, 7)) for k in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    stop.set()
    threads[0].join()
    for k in ("x", "y"):
        assert all(torch.equal(x, y) for x, y in zip(ref["a"], got[k])), k

    # the generators' draws are torch.manual_seed(seed)'s: the layer's output is the same
    net = _vfda_net()
    net.train()
    x = data[0][0].unsqueeze(0).repeat(2, 1, 1, 1, 1)
    torch.manual_seed(5)
    want = net(x)
    torch.manual_seed(77)
    with seeded_draws(net, 5):
        assert torch.equal(net(x), want)
    assert all(layer.generators is None for layer in vfda_layers(net).values())
