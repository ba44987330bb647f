"""VFDA: vicinal feature-statistics augmentation (Huang et al., IPMI 2023), the paper's novelty.

A feature map ``Z`` (B x C x H x W x S) of client ``n`` at encoder layer ``l`` is described by its
per-sample channel statistics; each statistic is treated as a Gaussian prototype whose variance (the
augmentation scope) combines the *local* (intra-institute, over the batch) and the *global*
(inter-institute, computed by the server from every client's momentum statistics) variance. New
statistics are sampled from the prototype and the features re-normalised to them. Equation numbers
follow the notes (``shared/papers/rt-hare_vfda_vessa.md`` section 2.2, from a secondary summary):

1. mu = mean_{HWS}(Z), sigma = sqrt(var_{HWS}(Z))                          (B x C each)
2. Sigma^2_local = var_b(mu), var_b(sigma)                                   (per channel)
3. EMD momentum: mu_bar <- m mu_bar + (1-m) E_b[mu], same for sigma          (uploaded each round)
4. Sigma^2_global = (1/N) sum_n (mu_bar_n - E_n[mu_bar])^2 (server), same for sigma
5. Sigma_hat^2 = Sigma^2_global * Sigma^2_local  ("product", VFDA) or, as in FedFA's code,
   (gamma + 1) * Sigma^2_local with gamma = C s / sum_c s, s = 1 / (1 + 1/Sigma^2_global)  ("fedfa")
6. mu_hat = mu + eps_mu Sigma_hat_mu, sigma_hat = sigma + eps_sigma Sigma_hat_sigma, eps ~ N(0, I);
   Z_hat = sigma_hat (Z - mu) / sigma + mu_hat

Only the per-channel statistics (Eq. 3) leave a client and only their variance (Eq. 4) comes back.
The module is the identity in evaluation mode and when disabled (the base / MixUp variants).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Literal, Mapping, Sequence

import torch
from torch import nn

Rule = Literal["product", "fedfa"]
STAT_KEYS = ("running_mu", "running_sigma")
GLOBAL_KEYS = ("global_var_mu", "global_var_sigma")


def combine_scope(var_global: torch.Tensor, var_local: torch.Tensor, rule: Rule, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 5: the variance of the Gaussian prototype from the global and the local variance."""
    if rule == "product":
        return var_global * var_local
    if rule == "fedfa":  # FedFA's FFALayer: channel-normalised weight from the inter-client variance
        s = 1.0 / (1.0 + 1.0 / (var_global + eps))
        gamma = s.numel() * s / s.sum()
        return (gamma + 1.0) * var_local
    raise ValueError(f"rule={rule!r}: expected 'product' or 'fedfa'")


class VicinalStatistics(nn.Module):
    """VFDA layer for a ``(B, C, *spatial)`` feature map (inserted after an encoder stage).

    Buffers (not part of ``state_dict``: they are exchanged explicitly, never averaged as weights):
    ``running_mu`` / ``running_sigma`` (Eq. 3, local) and ``global_var_mu`` / ``global_var_sigma``
    (Eq. 4, set from the server; 1 until the first server statistics arrive, as in FedFA).
    """

    def __init__(self, num_channels: int, p: float = 0.5, momentum: float = 0.9, eps: float = 1e-6,
                 rule: Rule = "product", enabled: bool = False, use_global: bool = True) -> None:
        super().__init__()
        if rule not in ("product", "fedfa"):
            raise ValueError(f"rule={rule!r}: expected 'product' or 'fedfa'")
        self.num_channels = num_channels
        self.p, self.momentum, self.eps, self.rule = p, momentum, eps, rule
        self.enabled = enabled
        self.use_global = use_global  # False: the local-only ablation (global variance fixed at 1)
        self.register_buffer("running_mu", torch.zeros(num_channels), persistent=False)
        self.register_buffer("running_sigma", torch.ones(num_channels), persistent=False)
        self.register_buffer("global_var_mu", torch.ones(num_channels), persistent=False)
        self.register_buffer("global_var_sigma", torch.ones(num_channels), persistent=False)
        self.register_buffer("tracked", torch.zeros((), dtype=torch.long), persistent=False)
        #: (CPU generator for the apply-or-not draw, generator on the feature device for Eq. 6), set by
        #: :func:`seeded_draws` for one local training run; None: torch's global RNG
        self.generators: tuple[torch.Generator, torch.Generator] | None = None

    def extra_repr(self) -> str:
        return (f"{self.num_channels}, p={self.p}, momentum={self.momentum}, rule={self.rule}, "
                f"enabled={self.enabled}, use_global={self.use_global}")

    @torch.no_grad()
    def _update_running(self, mu: torch.Tensor, sigma: torch.Tensor) -> None:
        """Eq. 3 (EMD). The first batch initialises the statistics (no bias towards 0/1)."""
        m = self.momentum if int(self.tracked) > 0 else 0.0
        self.running_mu.mul_(m).add_((1 - m) * mu.mean(0))
        self.running_sigma.mul_(m).add_((1 - m) * sigma.mean(0))
        self.tracked += 1

    def scope(self, mu: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eqs. 2 and 5: per-channel standard deviations of the mu and sigma prototypes."""
        var_mu_local = mu.detach().var(0, unbiased=False) + self.eps      # Eq. 2
        var_sigma_local = sigma.detach().var(0, unbiased=False) + self.eps
        g_mu = self.global_var_mu if self.use_global else torch.ones_like(var_mu_local)
        g_sigma = self.global_var_sigma if self.use_global else torch.ones_like(var_sigma_local)
        var_mu = combine_scope(g_mu, var_mu_local, self.rule, self.eps)    # Eq. 5
        var_sigma = combine_scope(g_sigma, var_sigma_local, self.rule, self.eps)
        return var_mu.sqrt(), var_sigma.sqrt()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.enabled) or z.shape[0] < 2:
            return z
        gen_cpu, gen_dev = self.generators or (None, None)
        if self.p < 1.0 and float(torch.rand((), generator=gen_cpu)) > self.p:
            return z
        dims = tuple(range(2, z.dim()))
        mu = z.mean(dims)                                                   # Eq. 1
        sigma = (z.var(dims, unbiased=False) + self.eps).sqrt()
        self._update_running(mu, sigma)                                     # Eq. 3
        scope_mu, scope_sigma = self.scope(mu, sigma)
        eps_mu = torch.randn(mu.shape, generator=gen_dev, device=mu.device, dtype=mu.dtype)
        eps_sigma = torch.randn(sigma.shape, generator=gen_dev, device=sigma.device, dtype=sigma.dtype)
        mu_hat = mu + eps_mu * scope_mu                                     # Eq. 6
        sigma_hat = (sigma + eps_sigma * scope_sigma).clamp_min(0.0)
        shape = (*mu.shape, *([1] * len(dims)))
        return sigma_hat.view(shape) * (z - mu.view(shape)) / sigma.view(shape) + mu_hat.view(shape)


# --------------------------------------------------------------------------------------------
# client <-> server exchange of the statistics
# --------------------------------------------------------------------------------------------
def vfda_layers(model: nn.Module) -> dict[str, VicinalStatistics]:
    return {name: m for name, m in model.named_modules() if isinstance(m, VicinalStatistics)}


def configure_vfda(model: nn.Module, *, enabled: bool, p: float | None = None, momentum: float | None = None,
                   rule: Rule | None = None, use_global: bool | None = None) -> None:
    for layer in vfda_layers(model).values():
        layer.enabled = enabled
        if p is not None:
            layer.p = p
        if momentum is not None:
            layer.momentum = momentum
        if rule is not None:
            layer.rule = rule
        if use_global is not None:
            layer.use_global = use_global


@contextlib.contextmanager
def seeded_draws(model: nn.Module, seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Within the block every VFDA layer of ``model`` draws from its own generators seeded with
    ``seed`` instead of torch's global RNG, so concurrent trainings in threads of one process (the
    lanes of an in-process run) do not share a random stream. The draws are those of
    ``torch.manual_seed(seed)`` followed by the same calls (one CPU stream for the apply-or-not draw,
    one stream on ``device`` for Eq. 6; on the CPU the two are one stream, as with the global RNG)."""
    device = torch.device(device)
    gen_cpu = torch.Generator().manual_seed(seed)
    gen_dev = gen_cpu if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed)
    layers = list(vfda_layers(model).values())
    for layer in layers:
        layer.generators = (gen_cpu, gen_dev)
    try:
        yield
    finally:
        for layer in layers:
            layer.generators = None


def local_statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    """Eq. 3 statistics of every VFDA layer: ``{<layer>.running_mu: (C,), <layer>.running_sigma: (C,)}``
    (what a client uploads; layers that never ran are left out)."""
    out = {}
    for name, layer in vfda_layers(model).items():
        if int(layer.tracked) > 0:
            out[f"{name}.running_mu"] = layer.running_mu.detach().cpu().clone()
            out[f"{name}.running_sigma"] = layer.running_sigma.detach().cpu().clone()
    return out


def load_local_statistics(model: nn.Module, stats: Mapping[str, torch.Tensor]) -> None:
    """Restore a client's own running statistics (kept locally between rounds)."""
    for name, layer in vfda_layers(model).items():
        if f"{name}.running_mu" in stats:
            layer.running_mu.copy_(torch.as_tensor(stats[f"{name}.running_mu"]))
            layer.running_sigma.copy_(torch.as_tensor(stats[f"{name}.running_sigma"]))
            layer.tracked.fill_(1)


def global_variance(client_stats: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Eq. 4 (server): per layer and channel, the population variance over clients of their momentum
    statistics. ``{<layer>.running_mu: (C,)}`` per client -> ``{<layer>.global_var_mu: (C,)}``.
    Only layers reported by at least two clients get a value."""
    keys = sorted({k for s in client_stats for k in s})
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        values = [torch.as_tensor(s[key], dtype=torch.float32) for s in client_stats if key in s]
        if len(values) < 2:
            continue
        stacked = torch.stack(values)                                        # (N, C)
        var = ((stacked - stacked.mean(0)) ** 2).mean(0)                     # (1/N) sum_n (.)^2
        layer, stat = key.rsplit(".", 1)
        out[f"{layer}.{stat.replace('running_', 'global_var_')}"] = var
    return out


def load_global_variance(model: nn.Module, variance: Mapping[str, torch.Tensor]) -> None:
    """Set the server's Eq. 4 variance on every VFDA layer it covers."""
    for name, layer in vfda_layers(model).items():
        for key in GLOBAL_KEYS:
            full = f"{name}.{key}"
            if full in variance:
                getattr(layer, key).copy_(torch.as_tensor(variance[full]))
