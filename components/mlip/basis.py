"""Radial and angular bases (the smooth geometric inputs of the model).

- Bessel radial basis with a polynomial envelope (DimeNet, Gasteiger et al. 2020, eqs. 7-8; the
  radial basis MatRIS uses with ``num_radial=7``):
  ``e_n(r) = sqrt(2/c) * sin(n*pi*r/c) / r * u(r/c)``.
- Polynomial envelope ``u(d) = 1 - (p+1)(p+2)/2 d^p + p(p+2) d^(p+1) - p(p+1)/2 d^(p+2)`` for
  ``d < 1`` (0 beyond): ``u``, ``u'`` and ``u''`` vanish at the cutoff, so energies, forces and
  their parameter gradients are continuous when an atom crosses it.
- Angular basis: Legendre polynomials ``P_l(cos theta)``, ``l = 0..L`` (the ``m = 0`` spherical
  harmonics; MatRIS uses spherical harmonics up to ``l = 4`` for its three-body basis).
"""
from __future__ import annotations

import math

import torch
from torch import nn


class PolynomialEnvelope(nn.Module):
    def __init__(self, exponent: int = 5):
        super().__init__()
        self.p = exponent

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        p = self.p
        u = (1 - (p + 1) * (p + 2) / 2 * d ** p + p * (p + 2) * d ** (p + 1) - p * (p + 1) / 2 * d ** (p + 2))
        return torch.where(d < 1, u, torch.zeros_like(u))


class BesselBasis(nn.Module):
    """``[E] distances -> [E, num_radial]`` enveloped Bessel functions.

    The frequencies ``n·π`` are fixed (a buffer): the geometry is recomputed on every pipeline stage,
    and a trainable basis would be a parameter shared by all stages."""

    def __init__(self, num_radial: int, cutoff: float, envelope_exponent: int = 5):
        super().__init__()
        self.cutoff = cutoff
        self.register_buffer("freq", torch.arange(1, num_radial + 1, dtype=torch.float32) * math.pi)
        self.envelope = PolynomialEnvelope(envelope_exponent)

    def forward(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = (r / self.cutoff).unsqueeze(-1)
        env = self.envelope(d)
        basis = math.sqrt(2.0 / self.cutoff) * torch.sin(self.freq * d) / r.unsqueeze(-1) * env
        return basis, env.squeeze(-1)


def legendre(x: torch.Tensor, max_l: int) -> torch.Tensor:
    """``[...] -> [..., max_l + 1]`` Legendre polynomials by Bonnet's recursion."""
    out = [torch.ones_like(x)]
    if max_l >= 1:
        out.append(x)
    for n in range(1, max_l):
        out.append(((2 * n + 1) * x * out[n] - n * out[n - 1]) / (n + 1))
    return torch.stack(out, dim=-1)
