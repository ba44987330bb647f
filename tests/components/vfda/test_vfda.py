"""VFDA layer properties: identity at evaluation, the sampled statistics' mean and variance, the
momentum statistics, the server's global variance, and the explicit (non-weight) exchange."""
from __future__ import annotations

import pytest
import torch

from components.vfda.config import ModelConfig
from components.vfda.model import build_model, norm_keys
from components.vfda.vfda import (VicinalStatistics, combine_scope, configure_vfda, global_variance,
                                  load_global_variance, load_local_statistics, local_statistics, vfda_layers)


def _features(b=4, c=3, s=6, seed=0, sd_min=0.5):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(b, c, generator=g)
    sd = sd_min + torch.rand(b, c, generator=g)
    z = torch.randn(b, c, s, s, s, generator=g)
    z = (z - z.mean((2, 3, 4), keepdim=True)) / z.std((2, 3, 4), unbiased=False, keepdim=True)
    return z * sd[..., None, None, None] + mu[..., None, None, None], mu, sd


def test_identity_in_eval_mode_and_when_disabled():
    z, _, _ = _features()
    layer = VicinalStatistics(3, p=1.0, enabled=True).eval()
    assert torch.equal(layer(z), z)
    layer = VicinalStatistics(3, p=1.0, enabled=False).train()
    assert torch.equal(layer(z), z)
    torch.manual_seed(0)
    assert not torch.allclose(VicinalStatistics(3, p=1.0, enabled=True).train()(z), z)


def test_model_is_identical_with_vfda_in_eval_mode():
    model = build_model(ModelConfig(channels=[4, 8, 16]), num_classes=3)
    x = torch.randn(2, 1, 16, 16, 16)
    model.eval()
    ref = model(x)
    configure_vfda(model, enabled=True, p=1.0)
    for layer in vfda_layers(model).values():  # a large scope: any leak into eval would show
        layer.global_var_mu.fill_(10.0)
        layer.global_var_sigma.fill_(10.0)
    assert torch.equal(model(x), ref)


def test_one_vfda_layer_after_each_encoder_stage_and_no_vfda_weights():
    model = build_model(ModelConfig(channels=[4, 8, 16, 32]), num_classes=3)
    layers = vfda_layers(model)
    assert [l.num_channels for l in layers.values()] == [4, 8, 16, 32]   # 3 encoder stages + bottleneck
    assert not any("running_mu" in k or "global_var" in k for k in model.state_dict())
    assert norm_keys(model) and all(k in model.state_dict() for k in norm_keys(model))


@pytest.mark.parametrize("rule", ["product", "fedfa"])
def test_sampled_statistics_have_intended_mean_and_variance(rule):
    z, mu, sd = _features(b=4, c=3, sd_min=2.0)  # sigma_hat stays positive (no clipping at 0)
    layer = VicinalStatistics(3, p=1.0, momentum=0.9, rule=rule, enabled=True).train()
    layer.global_var_mu.copy_(torch.tensor([0.5, 2.0, 1.0]))
    layer.global_var_sigma.copy_(torch.tensor([1.0, 0.25, 0.5]))
    scope_mu, scope_sigma = layer.scope(mu, sd)
    # Eq. 2 + Eq. 5 by hand
    var_mu_local = mu.var(0, unbiased=False) + layer.eps
    var_sd_local = sd.var(0, unbiased=False) + layer.eps
    if rule == "product":
        exp_mu, exp_sd = layer.global_var_mu * var_mu_local, layer.global_var_sigma * var_sd_local
    else:
        def gamma(v):
            s = 1 / (1 + 1 / (v + layer.eps))
            return 3 * s / s.sum()
        exp_mu = (gamma(layer.global_var_mu) + 1) * var_mu_local
        exp_sd = (gamma(layer.global_var_sigma) + 1) * var_sd_local
    torch.testing.assert_close(scope_mu ** 2, exp_mu, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(scope_sigma ** 2, exp_sd, rtol=1e-4, atol=1e-6)
    # Eq. 6: the output's statistics are draws from N(mu, scope_mu^2) and N(sigma, scope_sigma^2)
    torch.manual_seed(0)
    n = 2000
    means, stds = [], []
    for _ in range(n):
        out = layer(z)
        means.append(out.mean((2, 3, 4)))
        stds.append(out.std((2, 3, 4), unbiased=False))
    means, stds = torch.stack(means), torch.stack(stds)
    torch.testing.assert_close(means.mean(0), mu, atol=4 * scope_mu.max().item() / n ** 0.5 + 1e-4, rtol=0)
    torch.testing.assert_close(means.var(0), scope_mu.expand_as(mu) ** 2, rtol=0.12, atol=1e-6)
    assert not (sd - 3 * scope_sigma < 0).any()
    torch.testing.assert_close(stds.mean(0), sd, atol=4 * scope_sigma.max().item() / n ** 0.5 + 1e-3, rtol=0)
    torch.testing.assert_close(stds.var(0), scope_sigma.expand_as(sd) ** 2, rtol=0.12, atol=1e-6)


def test_fedfa_weight_is_channel_normalised():
    v = torch.tensor([0.1, 1.0, 10.0, 100.0])
    local = torch.ones(4)
    scope = combine_scope(v, local, "fedfa")
    assert torch.isclose((scope - 1).mean(), torch.tensor(1.0))   # mean gamma over channels is 1
    assert torch.all(scope[1:] >= scope[:-1])                        # larger global variance, larger scope
    assert torch.equal(combine_scope(v, local * 2, "product"), v * 2)
    with pytest.raises(ValueError, match="rule"):
        combine_scope(v, local, "sum")


def test_momentum_statistics_eq3():
    layer = VicinalStatistics(3, p=1.0, momentum=0.75, enabled=True).train()
    z1, mu1, sd1 = _features(seed=1)
    z2, mu2, sd2 = _features(seed=2)
    layer(z1)   # the first batch initialises the running statistics
    torch.testing.assert_close(layer.running_mu, mu1.mean(0), atol=1e-5, rtol=0)
    layer(z2)
    torch.testing.assert_close(layer.running_mu, 0.75 * mu1.mean(0) + 0.25 * mu2.mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.running_sigma, 0.75 * sd1.mean(0) + 0.25 * sd2.mean(0), atol=1e-4, rtol=0)


def test_server_global_variance_eq4():
    clients = [{"enc.0.running_mu": torch.tensor([0.0, 1.0]), "enc.0.running_sigma": torch.tensor([1.0, 1.0])},
               {"enc.0.running_mu": torch.tensor([2.0, 1.0]), "enc.0.running_sigma": torch.tensor([3.0, 1.0])},
               {"enc.0.running_mu": torch.tensor([4.0, 1.0]), "enc.0.running_sigma": torch.tensor([2.0, 1.0]),
                "enc.1.running_mu": torch.tensor([5.0])}]
    var = global_variance(clients)
    # (1/N) sum_n (mu_n - mean)^2 per channel: [0, 2, 4] -> 8/3 ; [1, 1, 1] -> 0
    torch.testing.assert_close(var["enc.0.global_var_mu"], torch.tensor([8 / 3, 0.0]))
    torch.testing.assert_close(var["enc.0.global_var_sigma"], torch.tensor([2 / 3, 0.0]))
    assert "enc.1.global_var_mu" not in var  # one client cannot define an inter-institute variance


def test_statistics_round_trip_between_client_and_server():
    model = build_model(ModelConfig(channels=[4, 8, 16]), num_classes=3)
    configure_vfda(model, enabled=True, p=1.0)
    model.train()
    model(torch.randn(2, 1, 16, 16, 16))
    stats = local_statistics(model)
    assert set(stats) == {f"{n}.{k}" for n in vfda_layers(model) for k in ("running_mu", "running_sigma")}
    other = build_model(ModelConfig(channels=[4, 8, 16]), num_classes=3)
    load_local_statistics(other, stats)
    assert local_statistics(other).keys() == stats.keys()
    var = global_variance([stats, {k: v + 1.0 for k, v in stats.items()}])
    load_global_variance(other, var)
    for layer in vfda_layers(other).values():
        torch.testing.assert_close(layer.global_var_mu, torch.full_like(layer.global_var_mu, 0.25))
