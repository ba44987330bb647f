"""Offline profiling: the fits recover known coefficients; measurements scale as the model says."""
import numpy as np
import pytest
import torch

from components.base import InputError
from components.skrull.cost_model import SHARDED, CommModel
from components.skrull.profiling import fit_compute, fit_memory, local_cost_model, measure_microbatch

MODEL = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2)


def test_fit_compute_recovers_the_cost_terms():
    true = {"c_mb": 0.02, "c_seq": 0.003, "c_seq_shard": 0.005, "c_tok": 2e-4, "c_quad": 2e-7}
    rows = []
    for kind in ("local", "sharded"):
        for s in (16, 64, 256, 1024):
            for n in (1, max(1, 1024 // s)):
                if kind == "local":
                    t = true["c_mb"] + n * (true["c_seq"] + true["c_tok"] * s + true["c_quad"] * s * s)
                else:
                    t = true["c_mb"] + n * (true["c_seq_shard"] + (true["c_tok"] * s + true["c_quad"] * s * s) / 2)
                rows.append({"kind": kind, "length": s, "n": n, "seconds": t, "tokens_on_rank": n * s, "saved_bytes": 100 * n * s})
    fit = fit_compute(rows, 2)
    for k, v in true.items():
        assert fit[k] == pytest.approx(v, rel=1e-6), k
    assert fit_memory(rows)["alpha_bytes_per_token"] == pytest.approx(100)
    with pytest.raises(InputError, match="at least 5"):
        fit_compute(rows[:3], 2)


def test_saved_activation_bytes_grow_linearly_with_tokens():
    from components.skrull.model import build_model

    torch.manual_seed(0)
    model = build_model(MODEL, 300, 512, seed=0)
    rng = np.random.default_rng(0)
    _, m64, t64 = measure_microbatch(model, [64], [0], 2, 300, 1, rng)
    _, m256, t256 = measure_microbatch(model, [64] * 4, [0] * 4, 2, 300, 1, rng)
    sec, m_sh, t_sh = measure_microbatch(model, [128], [SHARDED], 2, 300, 1, rng)
    assert (t64, t256, t_sh) == (64, 256, 64)
    assert m256 == pytest.approx(4 * m64, rel=0.05)
    assert sec > 0 and m_sh > 0.9 * m64                                 # a shard holds its own tokens' activations
    cost = local_cost_model("t", MODEL, {"c_mb": 0, "c_seq": 0, "c_seq_shard": 0, "c_tok": 1e-4, "c_quad": 0},
                            {"alpha_bytes_per_token": m64 / 64}, {"all_gather": CommModel(1e-4), "reduce_scatter": CommModel(1e-4)},
                            budget_bytes=m64 * 10)
    assert cost.bucket_size == 640 and cost.kv_bytes_per_token == 2 * 2 * 8 * 4
