"""Parameters of the MLIP library: data generation, model shape and the reference trainer.

These models are nested inside a paper's config (``januspipe.data``, ``januspipe.model``,
``januspipe.train``); they are plain pydantic models with ``extra="forbid"`` so typos stop a stage.
"""
from __future__ import annotations

import math
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: a thermostat temperature: finite and above 0 K (a negative one makes Langevin's noise amplitude
#: sqrt(T) NaN, so the positions become NaN; at 0 K the run is a quench, not a thermal sample)
Temperature = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class MlipDataConfig(BaseModel):
    """ASE molecular dynamics labelled by ASE's EMT calculator (energies, forces, stress)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    systems: list[str] = Field(
        ["Cu", "Al", "Ni", "Ag", "CuAu", "Cu3Pd", "NiAl"],
        min_length=1,
        description="chemical formulas of fcc metals/random alloys (EMT elements: Al Cu Ag Au Ni Pd Pt)")
    temperatures_K: list[Temperature] = Field([300.0, 700.0, 1100.0], min_length=1,
                                        description="Langevin thermostat temperatures, one trajectory each")
    supercell: int = Field(2, ge=1, le=4, description="repeats of the 4-atom cubic fcc cell per axis")
    frames_per_trajectory: int = Field(20, ge=3, le=10_000, description="labelled frames kept per trajectory")
    steps_between_frames: int = Field(3, ge=1, le=1000, description="MD steps between kept frames")
    timestep_fs: float = Field(4.0, gt=0, le=10, description="MD time step")
    max_strain: float = Field(0.03, ge=0, le=0.1, description="random cell strain per trajectory (stress labels)")
    split: tuple[float, float, float] = Field((0.8, 0.1, 0.1), description="train/val/test fractions "
                                              "(contiguous blocks of each trajectory)")

    @field_validator("systems")
    @classmethod
    def _emt_elements(cls, systems: list[str]) -> list[str]:
        from ase.formula import Formula

        allowed = {"Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt"}
        for s in systems:
            try:
                elements = set(Formula(s).count())
            except Exception:
                raise ValueError(f"system {s!r} is not a chemical formula such as 'Cu' or 'Cu3Au'") from None
            if not elements or not elements <= allowed:
                raise ValueError(f"system {s!r} uses {sorted(elements - allowed)}; EMT metals are {sorted(allowed)}")
        return systems

    @field_validator("split")
    @classmethod
    def _split_sums_to_one(cls, split: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(math.isfinite(f) and f > 0 for f in split) or abs(sum(split) - 1.0) > 1e-6:
            raise ValueError(f"split {split}: three positive fractions summing to 1")
        return split


class MlipModelConfig(BaseModel):
    """Shape of the MatRIS-style invariant model (quick profile: small enough for CPU steps of ms)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    hidden_dim: int = Field(16, ge=4, le=1024, description="atom/bond feature width")
    num_blocks: int = Field(3, ge=1, le=512, description="interaction blocks (the unit split into pipeline stages)")
    num_radial: int = Field(7, ge=1, le=32, description="Bessel radial basis functions")
    max_angular: int = Field(3, ge=0, le=8, description="highest Legendre order of the angular basis")
    cutoff: float = Field(4.0, gt=1.0, le=12.0, description="atom-graph cutoff (angstrom)")
    three_body_cutoff: float = Field(3.0, gt=1.0, le=8.0, description="line-graph (bond) cutoff (angstrom)")
    envelope_exponent: int = Field(5, ge=2, le=12, description="polynomial envelope exponent p")
    max_z: int = Field(94, ge=1, le=118, description="largest atomic number of the embedding table")

    @model_validator(mode="after")
    def _three_body_inside(self) -> "MlipModelConfig":
        if self.three_body_cutoff > self.cutoff:
            raise ValueError(f"three_body_cutoff={self.three_body_cutoff} must not exceed cutoff={self.cutoff}")
        return self


class MlipTrainConfig(BaseModel):
    """Reference single-process trainer (energy + force [+ stress] loss, double backward)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    epochs: int = Field(2, ge=1, le=10_000, description="passes over the training split")
    batch_size: int = Field(4, ge=1, le=4096, description="structures per optimiser step")
    lr: float = Field(5e-3, gt=0, le=1.0, description="Adam learning rate (cosine decay to lr/20)")
    energy_weight: float = Field(10.0, ge=0, description="w_E on MSE of energy per atom (eV/atom)^2")
    force_weight: float = Field(1.0, ge=0, description="w_F on MSE of force components (eV/A)^2")
    stress_weight: float = Field(0.0, ge=0, description="w_S on MSE of stress components (GPa)^2")
    max_minutes: float = Field(5.0, gt=0, description="wall-clock safety cap on training (stops early; logged as stopped_early)")

    @model_validator(mode="after")
    def _some_loss(self) -> "MlipTrainConfig":
        if self.energy_weight + self.force_weight + self.stress_weight <= 0:
            raise ValueError("at least one of energy_weight, force_weight, stress_weight must be > 0")
        return self
