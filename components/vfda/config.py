"""Parameters of the VFDA component (the schema of the ``vfda`` section of ``params.yaml``).

Defaults are the **quick profile**: five small synthetic institutes (four training, one held out),
a 3D U-Net with 8-64 channels on 24^3 volumes (``data.spatial_size``), 3 strategies x
{base, +MixUp, +VFDA} x 3 seeds, run in one Flower simulation on a 2-core CPU.
``profiles/full.yaml`` holds the paper-scale overrides.
"""
from __future__ import annotations

from typing import Annotated, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from components.base import MAX_TIMEOUT_S, ComponentConfig, Seed

Strategy = Literal["fedavg", "fedprox", "fedbn"]
#: "vfda" uses ``vfda.rule``; "vfda-product" / "vfda-fedfa" force a rule; "vfda-local" fixes the
#: global variance at 1 (the local-only ablation of the notes, section 2.5)
Variant = Literal["base", "mixup", "vfda", "vfda-product", "vfda-fedfa", "vfda-local"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
VARIANTS: tuple[str, ...] = get_args(Variant)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def num_local_test(num_volumes: int, test_fraction: float) -> int:
    """Volumes of a training institute kept for its local test split (``data.generate_dataset``): a share
    ``test_fraction`` of them, at least 1, leaving at least 1 for training."""
    return min(num_volumes - 1, max(1, int(round(num_volumes * test_fraction))))


class InstituteConfig(_Strict):
    """One synthetic institute: its acquisition protocol and its size."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]+$", description="institute id (file-name safe)")
    num_volumes: int = Field(..., ge=2, le=10000, description="labelled volumes generated")
    held_out: bool = Field(False, description="never trains; evaluated as an unseen institute")
    grid: int = Field(..., ge=8, le=512, description="voxels per axis at acquisition")
    gamma: float = Field(1.0, gt=0.1, lt=10.0, description="intensity gamma (MONAI AdjustContrast)")
    contrast: float = Field(1.0, gt=0.05, lt=20.0, description="multiplicative contrast")
    offset: float = Field(0.0, ge=-5.0, le=5.0, description="additive intensity offset")
    bias_field: float = Field(0.0, ge=0.0, le=1.0, description="RandBiasField coefficient range (-x, x)")
    noise_std: float = Field(0.05, ge=0.0, le=2.0, description="Rician noise std (MONAI RandRicianNoise)")
    lesion_radius_mm: tuple[float, float] = Field((3.0, 7.0), description="lesion radius range (mm)")
    num_lesions: tuple[int, int] = Field((2, 5), description="lesions per volume (min, max)")

    @model_validator(mode="after")
    def _ranges(self) -> "InstituteConfig":
        lo, hi = self.lesion_radius_mm
        if not 0.5 <= lo < hi:
            raise ValueError(f"lesion_radius_mm={self.lesion_radius_mm}: expected 0.5 <= min < max")
        nlo, nhi = self.num_lesions
        if not 1 <= nlo <= nhi:
            raise ValueError(f"num_lesions={self.num_lesions}: expected 1 <= min <= max")
        return self


def _default_institutes() -> list[InstituteConfig]:
    # Four training institutes with distinct acquisition protocols (one small, noisy one) and one
    # held-out institute whose protocol lies partly outside the training range.
    return [
        InstituteConfig(name="A", num_volumes=14, grid=24, gamma=1.0, contrast=1.0, offset=0.0,
                        bias_field=0.0, noise_std=0.04, lesion_radius_mm=(3.0, 7.0)),
        InstituteConfig(name="B", num_volumes=12, grid=30, gamma=0.7, contrast=1.4, offset=0.1,
                        bias_field=0.1, noise_std=0.06, lesion_radius_mm=(3.0, 6.5)),
        InstituteConfig(name="C", num_volumes=12, grid=18, gamma=1.5, contrast=0.8, offset=-0.05,
                        bias_field=0.05, noise_std=0.03, lesion_radius_mm=(3.5, 7.5)),
        InstituteConfig(name="D", num_volumes=6, grid=24, gamma=1.2, contrast=1.1, offset=0.05,
                        bias_field=0.03, noise_std=0.12, lesion_radius_mm=(2.5, 5.5)),
        InstituteConfig(name="E", num_volumes=10, held_out=True, grid=21, gamma=0.55, contrast=1.6,
                        offset=0.15, bias_field=0.15, noise_std=0.08, lesion_radius_mm=(3.0, 7.0)),
    ]


class DataConfig(_Strict):
    root: str | None = Field(None, description="a real multi-site dataset in the same layout (institutes.json + "
                                               "MONAI datalists): validated and copied instead of generating")
    institutes: list[InstituteConfig] = Field(default_factory=_default_institutes,
                                              description="training and held-out institutes")
    field_of_view_mm: float = Field(24.0, gt=4.0, le=1000.0, description="physical extent per axis (mm)")
    target_spacing_mm: float = Field(1.0, gt=0.05, le=20.0, description="resampling spacing (Spacingd)")
    spatial_size: int = Field(24, ge=16, le=256, description="network input edge after resampling (voxels)")
    num_classes: int = Field(3, ge=2, le=16, description="label classes incl. background")
    test_fraction: float = Field(0.25, gt=0.0, lt=1.0, description="share of each training institute kept for its local test set")

    @model_validator(mode="after")
    def _institutes(self) -> "DataConfig":
        names = [i.name for i in self.institutes]
        if len(set(names)) != len(names):
            raise ValueError(f"institutes: duplicate names {names}")
        n_train = sum(not i.held_out for i in self.institutes)
        if n_train < 2:
            raise ValueError(f"institutes: {n_train} training institutes; expected at least 2")
        return self


class ModelConfig(_Strict):
    channels: list[Annotated[int, Field(ge=1)]] = Field(
        [8, 16, 32, 64], min_length=3, max_length=6,
        description="MONAI UNet channels per stage (last = bottleneck), each >= 1")
    num_res_units: int = Field(1, ge=0, le=4, description="residual units per MONAI UNet block")
    norm: Literal["batch", "instance"] = Field(
        "batch", description="normalisation layers: batch = BatchNorm3d (FedBN keeps its affine weights and "
                             "running statistics local); instance = InstanceNorm3d with affine weights (statistics "
                             "per volume, none kept; FedBN keeps the affine weights local)")


class VfdaLayerConfig(_Strict):
    rule: Literal["product", "fedfa"] = Field(
        "product", description="variance combination: product = VFDA summary (global x local); "
                               "fedfa = FedFA code ((gamma+1) x local)")
    p: float = Field(0.5, ge=0.0, le=1.0, description="probability the augmentation is applied per forward pass")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="EMA momentum m of the running statistics")
    eps: float = Field(1e-6, gt=0.0, le=1e-2, description="numerical floor of variances")


class FederationConfig(_Strict):
    """The experiment grid and the federated training hyper-parameters (shared by every variant)."""

    strategies: list[Strategy] = Field(["fedavg", "fedprox", "fedbn"], min_length=1)
    variants: list[Variant] = Field(["base", "mixup", "vfda"], min_length=1)
    seeds: list[Seed] = Field([0, 1, 2], min_length=1, description="federation seeds (offset by the master seed)")
    ablation_strategies: list[Strategy] = Field(
        [], description="strategies that also run the ablation variants")
    ablation_variants: list[Variant] = Field(
        ["vfda-fedfa", "vfda-local"], description="extra variants run for ablation_strategies (vfda-fedfa, "
                                                  "vfda-product, vfda-local)")
    num_rounds: int = Field(10, ge=1, le=1000)
    local_steps: int = Field(8, ge=1, le=100000, description="local optimiser steps per round")
    batch_size: int = Field(2, ge=2, le=64, description="volumes per step (VFDA needs >= 2), distinct volumes: at "
                                                        "most the smallest training institute's training volumes")
    lr: float = Field(4e-3, gt=0.0, le=1.0, description="Adam learning rate (round 1)")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="learning rate over rounds: cosine decays lr to lr_final_factor x lr in the last round")
    lr_final_factor: float = Field(0.1, gt=0.0, le=1.0, description="last round's lr relative to lr (cosine)")
    proximal_mu: float = Field(0.01, gt=0.0, le=10.0, description="FedProx proximal weight mu")
    mixup_alpha: float = Field(0.4, gt=0.0, le=10.0, description="local MixUp Beta(alpha, alpha)")
    min_train_clients: int = Field(2, ge=1, description="a round aggregates only with at least this many replies")
    round_timeout_s: float = Field(600.0, gt=0.0, le=MAX_TIMEOUT_S, description="how long the server waits for replies; a client "
                                                                "that has not replied by then is logged as failed")

    @field_validator("strategies", "variants", "seeds", "ablation_strategies", "ablation_variants")
    @classmethod
    def _no_duplicates(cls, value: list) -> list:
        # a repeated entry would run the same federation twice (two lanes writing one folder) and
        # count its seeds twice in the summary
        dups = sorted({v for v in value if value.count(v) > 1}, key=str)
        if dups:
            raise PydanticCustomError("duplicate_entries", "each entry once; {dups} repeated", {"dups": str(dups)})
        return value


class SimulationConfig(_Strict):
    backend: Literal["ray"] = Field("ray", description="Flower simulation backend")
    num_cpus: int = Field(2, ge=1, le=1024, description="CPUs given to the simulation backend")
    cpus_per_client: float = Field(1.0, gt=0.0, description="CPUs per ClientApp actor")
    gpus_per_client: float = Field(0.0, ge=0.0, le=8.0, description="GPUs per ClientApp actor (full profile)")
    lanes: int = Field(2, ge=1, le=64,
                       description="federations run concurrently; each lane has its own SuperNodes")
    fault_round: int = Field(0, ge=0, description="fault injection: crash a client in this round (0 = never; "
                                                  "at most federation.num_rounds)")
    fault_partition: int = Field(
        0, ge=0, description="fault injection: index of the training institute (in institutes.json order) whose "
                             "client crashes in fault_round, in every lane; must be below the number of "
                             "training institutes")

    @model_validator(mode="after")
    def _one_client_fits(self) -> "SimulationConfig":
        # Ray gets num_cpus CPUs and Flower sizes its actor pool as int(num_cpus / cpus_per_client):
        # a client asking for more CPUs than the backend has leaves the pool empty (Flower's "ActorPool is
        # empty" deep inside the run, after the Ray start-up). There is no num_gpus to check
        # gpus_per_client against: Ray detects the GPUs itself
        if self.cpus_per_client > self.num_cpus:
            raise ValueError(f"simulation.cpus_per_client={self.cpus_per_client:g} is more than "
                             f"simulation.num_cpus={self.num_cpus}: the simulation backend could not place a "
                             f"single ClientApp actor; expected cpus_per_client <= num_cpus")
        return self


class VfdaConfig(ComponentConfig):
    paper: ClassVar[str] = "vfda"

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    vfda: VfdaLayerConfig = VfdaLayerConfig()
    federation: FederationConfig = FederationConfig()
    simulation: SimulationConfig = SimulationConfig()

    @model_validator(mode="after")
    def _consistent(self) -> "VfdaConfig":
        # with data.root the training institutes come from that dataset's institutes.json: checked
        # against it when the data is read (data.check_federation)
        n_train = sum(not i.held_out for i in self.data.institutes)
        if self.data.root is None and self.federation.min_train_clients > n_train:
            raise ValueError(f"federation.min_train_clients={self.federation.min_train_clients}: expected "
                             f"at most the {n_train} training institutes")
        if self.data.root is None and self.simulation.fault_partition >= n_train:
            raise ValueError(f"simulation.fault_partition={self.simulation.fault_partition}: expected the index "
                             f"of a training institute, 0 to {n_train - 1} ({n_train} training institutes)")
        if self.data.root is None:  # every batch draws distinct volumes (training.train_local)
            frac = self.data.test_fraction
            smallest = min((i for i in self.data.institutes if not i.held_out),
                           key=lambda i: i.num_volumes - num_local_test(i.num_volumes, frac))
            n_vol = smallest.num_volumes - num_local_test(smallest.num_volumes, frac)
            if self.federation.batch_size > n_vol:
                raise ValueError(f"federation.batch_size={self.federation.batch_size}: institute {smallest.name} has "
                                 f"{n_vol} training volumes (its {smallest.num_volumes} less the local test split, "
                                 f"data.test_fraction={frac:g}); expected at most {n_vol}, every batch draws "
                                 f"distinct volumes")
        fault, rounds = self.simulation.fault_round, self.federation.num_rounds
        if fault > rounds:
            raise ValueError(f"simulation.fault_round={fault} is after the last round (federation.num_rounds="
                             f"{rounds}): the fault would never fire; expected 0 (no fault) or a round 1 to {rounds}")
        levels = len(self.model.channels) - 1
        if self.data.spatial_size % (2 ** levels):
            raise ValueError(f"data.spatial_size={self.data.spatial_size}: expected a multiple of "
                             f"2^{levels} (the U-Net downsamples {levels} times for model.channels)")
        return self
