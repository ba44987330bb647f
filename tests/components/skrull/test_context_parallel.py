"""DACP execution is exact: the same global batch gives the same loss and gradients whatever the
schedule (local vs sharded sequences, number of micro-batches, DP × CP layout) — in plain
torch.distributed (float64) and through DeepSpeed ZeRO-2 (float32)."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from components.base import InputError
from components.skrull.baselines import deepspeed_schedule
from components.skrull.context_parallel import LoopbackExchange, build_layout, microbatch_loss, zigzag_bounds
from components.skrull.cost_model import SHARDED, CommModel, CostModel, shard_sizes
from components.skrull.gds import skrull_schedule
from components.skrull.model import build_model
from components.skrull.train import equivalence_worker, reference_loss_and_grad
from tasks.launch import spawn

MODEL = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2)
VOCAB = 300


def toy_cost(bucket):
    return CostModel(name="toy", layers=2, kv_bytes_per_token=256.0, c_tok=1e-5, c_quad=1e-7,
                     mem_bytes_per_token=1.0, mem_budget_bytes=float(bucket),
                     all_gather=CommModel(1e-4, 0.0, 1e9), reduce_scatter=CommModel(1e-4, 0.0, 1e9))


def _grads(model):
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def test_layout_packs_local_sequences_then_zigzag_shards():
    rng = np.random.default_rng(0)
    tokens = [rng.integers(0, VOCAB, n) for n in (5, 17, 40, 9)]
    placement = (0, SHARDED, 1, SHARDED)
    for rank in range(2):
        lay = build_layout([0, 1, 2, 3], placement, tokens, rank, 2)
        local = sum(len(tokens[k]) for k, p in enumerate(placement) if p == rank)
        shard = sum(shard_sizes(len(tokens[k]), 2)[rank] for k, p in enumerate(placement) if p == SHARDED)
        assert lay.n_local == local and lay.num_tokens == local + shard
        assert lay.gather_index.numel() == 17 + 9                         # every sharded position once
    assert zigzag_bounds(10, 2) == [(0, 3), (3, 6), (6, 8), (8, 10)]


def test_sharded_and_local_attention_agree_in_one_process():
    """With one CP rank a 'sharded' sequence runs through the chunk / gather path: the result must
    equal plain causal attention and per-sequence reference runs (float64)."""
    model = build_model(MODEL, VOCAB, 256, seed=0, dtype=torch.float64)
    rng = np.random.default_rng(1)
    tokens = [rng.integers(0, VOCAB, n) for n in (5, 17, 40, 9)]
    results = []
    for placement in ([0, 0, 0, 0], [SHARDED] * 4, [0, SHARDED, 0, SHARDED]):
        model.zero_grad()
        loss = microbatch_loss(model, build_layout(range(4), placement, tokens, 0, 1, LoopbackExchange(1)))
        loss.backward()
        results.append((loss.item(), _grads(model).clone()))
    for loss, grad in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-12)
        assert torch.allclose(grad, results[0][1], atol=1e-12)


def test_sharded_attention_runs_in_bfloat16_close_to_local_attention():
    """bf16: the sharded path merges its blocks and adds their gradients in fp32, so it stays as close
    to plain causal attention as bf16 itself allows (a dtype slip in the merge or the backward raises)."""
    model = build_model(MODEL, VOCAB, 256, seed=0, dtype=torch.bfloat16)
    rng = np.random.default_rng(3)
    tokens = [rng.integers(0, VOCAB, n) for n in (40, 64)]
    results = []
    for placement in ([0, 0], [SHARDED, SHARDED]):
        model.zero_grad()
        loss = microbatch_loss(model, build_layout(range(2), placement, tokens, 0, 1, LoopbackExchange(1)))
        loss.backward()
        results.append((loss.float().item(), _grads(model).float().clone()))
    (l0, g0), (l1, g1) = results
    assert all(p.grad.dtype == torch.bfloat16 for p in model.parameters())
    assert l1 == pytest.approx(l0, rel=2e-2)
    assert torch.isfinite(g1).all() and float((g1 - g0).norm() / g0.norm()) < 0.1


def test_too_short_sequence_cannot_be_sharded():
    with pytest.raises(InputError, match="2·cp"):
        build_layout([0], [SHARDED], [np.arange(3)], 0, 2)


def test_two_process_schedules_give_the_same_loss_and_gradients():
    """Skrull vs DeepSpeed-style vs DP=2, on 2 gloo processes, against a single-process reference."""
    rng = np.random.default_rng(0)
    lengths = [5, 7, 13, 40, 64, 9, 4, 33, 21, 90]
    tokens = [rng.integers(0, VOCAB, n) for n in lengths]
    cost = toy_cost(60)
    skrull = skrull_schedule(lengths, 1, 2, cost)
    assert any(p == SHARDED for _, _, mb in skrull.microbatches() for p in mb.placement)
    assert any(p != SHARDED for _, _, mb in skrull.microbatches() for p in mb.placement)
    schedules = [skrull, replace(deepspeed_schedule(lengths, 1, 2, cost, 1), name="deepspeed"),
                 replace(skrull_schedule(lengths, 2, 1, cost.with_bucket(120)), name="dp2")]
    spec = dict(model=MODEL, vocab_size=VOCAB, max_positions=256, seed=0, tokens=tokens, schedules=schedules,
                deepspeed=True)
    per_rank = spawn(equivalence_worker, 2, spec, timeout=600)
    ref_loss, ref_grad = reference_loss_and_grad(spec)
    assert len({len(s.ranks[0]) for s in schedules[:2]}) == 2        # different micro-batch counts
    for name in ("skrull", "deepspeed", "dp2"):
        for rank in range(2):
            got = per_rank[rank][name]
            assert got["loss"] == pytest.approx(ref_loss, rel=1e-12), name
            np.testing.assert_allclose(got["grad"], ref_grad, atol=1e-12, err_msg=name)        # float64
            # DeepSpeed ZeRO-2 applies the same gradient (SGD, lr = 1; float32)
            np.testing.assert_allclose(got["deepspeed_update"], ref_grad, atol=1e-6, err_msg=f"{name} (DeepSpeed)")
