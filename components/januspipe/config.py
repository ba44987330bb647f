"""The ``januspipe`` section of ``params.yaml`` (defaults = quick profile, a few minutes on 2 cores).

It nests the MLIP library's settings (``data``, ``model``, ``train``) and adds the phase-cost
profiling, the real pipelined runs and the simulation.
"""
from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from components.base import MAX_TIMEOUT_S, ComponentConfig
from components.januspipe.schedules import SCHEDULE_NAMES
from components.mlip.config import MlipDataConfig, MlipModelConfig, MlipTrainConfig

ScheduleName = Literal["gpipe4", "1f1b4", "hanayo4", "symfold", "wavek"]
PositiveInt = Annotated[int, Field(ge=1)]

#: the largest gloo ping-pong message of the profile (``profiling.p2p_sizes_bytes``): 1 GiB. Each of the
#: two ranks allocates a buffer of the size; 10**12 bytes would exhaust the memory before the first send
MAX_P2P_BYTES = 1 << 30
#: a ping-pong message size: a strict integer (``true`` is not 1 byte) in [1, MAX_P2P_BYTES]
P2pBytes = Annotated[StrictInt, Field(ge=1, le=MAX_P2P_BYTES)]


class ProfileConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    reps: int = Field(4, ge=1, le=100, description="timed repetitions of the four phases (after one warm-up)")
    microbatches: int = Field(2, ge=1, le=64, description="distinct micro-batches timed per repetition")
    p2p_sizes_bytes: list[P2pBytes] = Field(
        [8, 1 << 20], min_length=2,
        description="gloo ping-pong message sizes in bytes: at least two distinct sizes, each from 1 to 1 GiB "
                    "(1073741824; each of the two ranks holds a buffer of it); the latency and bandwidth fit uses "
                    "the smallest and the largest, in any order")

    @model_validator(mode="after")
    def _distinct_sizes(self) -> "ProfileConfig":
        sizes = self.p2p_sizes_bytes
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"profiling.p2p_sizes_bytes={sizes}: expected distinct sizes (a repeat is measured "
                             f"once; equal smallest and largest sizes give the bandwidth fit no slope)")
        return self


class PipelineConfig(BaseModel):
    """Real four-phase pipelined runs (torch.distributed, gloo on CPU)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    num_blocks: int = Field(8, ge=1, le=512, description="interaction blocks of the pipelined model (>= 2 x "
                            "processes for symfold/wavek/hanayo4; hanayo4's two-wave candidates need 4 x "
                            "processes: at a count where they do not fit they are not tuned, which the run "
                            "logs and records in its row of runs.json, grid_dropped)")
    process_counts: list[int] = Field([2, 4], min_length=1, description="pipeline depths run for real "
                                      "(one process per device; 4 on 2 cores is oversubscribed)")
    schedules: list[ScheduleName] = Field(list(SCHEDULE_NAMES), min_length=1, description="schedules run for real")
    microbatches_per_device: int = Field(2, ge=1, le=64, description="micro-batches per step = this x devices")
    structures_per_microbatch: int = Field(1, ge=1, le=64, description="structures per micro-batch")
    warmup: int = Field(1, ge=1, le=10, description="untimed steps (the first also measures saved-tensor memory)")
    steps: int = Field(1, ge=1, le=100, description="timed steps per schedule")
    dtype: Literal["float32", "float64"] = Field("float32", description="dtype of the timed runs")
    backend: Literal["gloo", "nccl"] = Field("gloo", description="torch.distributed backend; nccl only with one process (multi-rank nccl is refused, see the README)")
    timeout_s: float = Field(900.0, gt=0, le=MAX_TIMEOUT_S, description="kill a launch that runs longer")

    @field_validator("process_counts")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(p < 1 for p in v):
            raise ValueError(f"process_counts {v}: every entry must be >= 1")
        return v

    @model_validator(mode="after")
    def _backend(self) -> "PipelineConfig":
        if self.backend == "nccl" and max(self.process_counts) > 1:
            raise ValueError(
                f"pipeline.backend='nccl' with process_counts={self.process_counts}: not supported; the runtime "
                f"posts every receive of a step before its sends, which NCCL (per-pair in-order matching, "
                f"rendezvous sends) may deadlock on, and it was never verified on GPUs; expected "
                f"backend='gloo' (the ranks then run on the CPU)")
        return self


class SimulateConfig(BaseModel):
    """Discrete-event simulation at 2..32 devices fed by the measured costs."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    devices: list[PositiveInt] = Field([2, 4, 8, 16, 32], min_length=1, description="pipeline devices simulated")
    microbatches_per_device: int = Field(2, ge=1, le=64, description="M = this x devices (fixed before "
                                         "looking at results: 1F1B's usual M >= 2D)")
    num_blocks: int = Field(128, ge=1, le=4096, description="blocks of the simulated (deep) model; >= 4 x the "
                            "largest device count simulated (devices, timeline_devices) so every placement fits "
                            "(Hanayo-4 with two waves: 4 x devices stages)")
    headline_devices: int = Field(32, ge=2, description="device count of the throughput claim (>= 2: at one "
                                  "device the WaveK-like schedule has no candidate within 1F1B-4's memory)")
    extra_microbatch_factors: list[PositiveInt] = Field([], description="also simulate M = f x D at the headline "
                                                "device count (full profile: [1, 4])")
    timeline_devices: int = Field(4, ge=1, le=64, description="devices of the simulated timeline pictures")


class JanuspipeConfig(ComponentConfig):
    paper: ClassVar[str] = "januspipe"

    data: MlipDataConfig = MlipDataConfig()
    model: MlipModelConfig = MlipModelConfig()
    train: MlipTrainConfig = MlipTrainConfig()
    profiling: ProfileConfig = ProfileConfig()
    pipeline: PipelineConfig = PipelineConfig()
    simulate: SimulateConfig = SimulateConfig()

    @model_validator(mode="after")
    def _stages_fit(self) -> "JanuspipeConfig":
        need = max(self.pipeline.process_counts) * 2 if set(self.pipeline.schedules) & {"symfold", "wavek", "hanayo4"} \
            else max(self.pipeline.process_counts)
        if need > self.pipeline.num_blocks:
            raise ValueError(f"pipeline.num_blocks={self.pipeline.num_blocks} is smaller than the {need} pipeline "
                             f"stages of the largest real run (process_counts={self.pipeline.process_counts}); "
                             f"expected num_blocks >= {need}")
        # every schedule is simulated; Hanayo-4 with two waves needs 4 x devices stages, and family_grid
        # would silently drop those candidates from the baseline's tuning grid where they do not fit
        sim_max = max(*self.simulate.devices, self.simulate.timeline_devices)
        if sim_max * 4 > self.simulate.num_blocks:
            raise ValueError(f"simulate.num_blocks={self.simulate.num_blocks} is smaller than the {4 * sim_max} "
                             f"stages of Hanayo-4 with two waves at {sim_max} devices (the largest of "
                             f"simulate.devices={self.simulate.devices} and simulate.timeline_devices="
                             f"{self.simulate.timeline_devices}); expected simulate.num_blocks >= {4 * sim_max}")
        if self.simulate.headline_devices not in self.simulate.devices:
            raise ValueError(f"simulate.headline_devices={self.simulate.headline_devices} is not one of "
                             f"simulate.devices={self.simulate.devices}")
        return self
