"""The segmentation network: MONAI's 3D ``UNet`` with a VFDA layer after each encoder stage.

MONAI builds the U-Net recursively from ``_get_down_layer`` (encoder stages; the bottleneck is a
down layer with stride 1); overriding that hook appends a
:class:`~components.vfda.vfda.VicinalStatistics` module to every encoder stage and to the bottleneck
(FedFA's placement; the decoder is left alone, where the paper reports no gain). Every variant uses
the same network: for base / MixUp the VFDA layers stay disabled, i.e. exactly the identity.
"""
from __future__ import annotations

import threading
from typing import Any

import torch
from monai.networks.nets import UNet
from torch import nn

from components.vfda.config import ModelConfig, VfdaLayerConfig
from components.vfda.vfda import VicinalStatistics


class VfdaUNet(UNet):
    """``monai.networks.nets.UNet`` (3D) + VicinalStatistics after each encoder stage and the bottleneck.

    Input ``(B, 1, S, S, S)``, output logits ``(B, num_classes, S, S, S)``.
    """

    def __init__(self, vfda: VfdaLayerConfig | None = None, **unet_kwargs: Any) -> None:
        cfg = vfda or VfdaLayerConfig()
        # set before UNet.__init__ builds the blocks (and before nn.Module's attribute machinery)
        object.__setattr__(self, "_vfda_kwargs", dict(p=cfg.p, momentum=cfg.momentum, eps=cfg.eps, rule=cfg.rule))
        super().__init__(**unet_kwargs)

    def _get_down_layer(self, in_channels: int, out_channels: int, strides: int, is_top: bool) -> nn.Module:
        stage = super()._get_down_layer(in_channels, out_channels, strides, is_top)
        return nn.Sequential(stage, VicinalStatistics(out_channels, **self._vfda_kwargs))


#: ``nn.Module`` initialisation draws from torch's global RNG: every model of this component is built
#: under this lock, so a seeded build (:func:`build_model` with ``seed``) is not disturbed by another
#: thread building a model at the same time (in-process lanes, ``benchmarks/vfda/device_check.py``).
#: Training and VFDA draw from their own generators (:func:`components.vfda.training.train_local`).
BUILD_LOCK = threading.Lock()


def norm_layer(norm: str) -> str | tuple[str, dict[str, Any]]:
    """MONAI ``norm`` argument: BatchNorm3d as MONAI builds it; InstanceNorm3d *with affine weights*
    (MONAI's plain "instance" has no parameters or buffers at all, which would leave FedBN nothing to
    keep local, i.e. make it FedAvg). Instance statistics stay per volume (no running statistics)."""
    return ("instance", {"affine": True}) if norm == "instance" else norm


def build_model(model: ModelConfig, num_classes: int, vfda: VfdaLayerConfig | None = None,
                seed: int | None = None) -> VfdaUNet:
    """The network; with ``seed`` its initial weights are ``torch.manual_seed(seed)``'s."""
    with BUILD_LOCK:
        if seed is not None:
            torch.manual_seed(seed)
        return VfdaUNet(vfda=vfda, spatial_dims=3, in_channels=1, out_channels=num_classes,
                        channels=tuple(model.channels), strides=(2,) * (len(model.channels) - 1),
                        num_res_units=model.num_res_units, norm=norm_layer(model.norm))


def norm_keys(model: nn.Module) -> list[str]:
    """``state_dict`` keys of normalisation layers (weights and running statistics): what FedBN keeps
    local."""
    keys = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):  # BatchNorm*d and InstanceNorm*d
            keys += [f"{name}.{k}" for k in module.state_dict()]
    return keys


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """What travels as model weights (VFDA buffers are not part of ``state_dict``)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def device() -> torch.device:
    """CUDA when a GPU is visible (full profile on a cluster), else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
