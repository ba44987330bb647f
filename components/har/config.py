"""Parameters of the RT-HARE / IMFE component (the schema of the ``har`` section of params.yaml).

Defaults are the quick profile (48x48 clips, a few minutes on an idle 2-core CPU);
``profiles/full.yaml`` holds the paper-scale overrides.
"""
from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from components.base import ComponentConfig, Seed
from components.har.figures import ACTIONS


#: frame rates of the streaming runtime (``evaluate.stream_fps``, the CLI's ``--fps``): one frame every 10 s
#: at the slowest (a lower rate only makes the wall-clock run wait: 1e-300 fps waits forever, and
#: overflows ``time.sleep``), 1000 at the fastest
STREAM_FPS_MIN, STREAM_FPS_MAX = 0.1, 1000.0

#: a layer width (channels) or a block count: at least 1 (a 0 or negative entry used to be accepted: a
#: 0-channel conv fails deep inside torch, and a 0 in ``imfe.head_blocks`` still built one block)
Positive = Annotated[int, Field(ge=1)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Section):
    source: Literal["synthetic", "ucf101"] = Field(
        "synthetic", description="synthetic = the procedural stick-figure generator; ucf101 = a folder "
                                 "of <Class>/<video> files given by ucf101_root")
    ucf101_root: str | None = Field(None, description="root of a dataset in UCF101 folder layout (source=ucf101)")
    ucf101_split: int = Field(1, ge=1, le=3, description="UCF101 split 1-3: ucfTrainTestlist/testlist0<k>.txt when it exists, "
                             "else test groups (k-1)*7+1..k*7")
    classes: list[str] = Field(list(ACTIONS), min_length=2,
                               description="synthetic action classes (a subset of the generator's)")
    height: int = Field(48, ge=32, le=512, description="frame height in pixels (multiple of 8)")
    width: int = Field(48, ge=32, le=512, description="frame width in pixels (multiple of 8)")
    fps: int = Field(30, ge=5, le=120, description="frame rate of the clips")
    frames_per_clip: int = Field(18, ge=6, le=3000, description="frames per clip (a multiple of clip_len)")
    train_clips_per_class: int = Field(20, ge=1, le=10000, description="synthetic clips per class, train split")
    test_clips_per_class: int = Field(8, ge=1, le=10000, description="synthetic clips per class, test split")
    noise_std: tuple[float, float] = Field((2.0, 6.0), description="range of per-clip Gaussian pixel noise (0-255 scale)")
    clutter_shapes: int = Field(8, ge=0, le=200, description="random background shapes per clip")
    camera_jitter_px: float = Field(0.6, ge=0, le=8, allow_inf_nan=False, description="std of the per-frame camera shake (pixels)")
    crf: int = Field(17, ge=0, le=51, description="H.264 constant rate factor of the written clips")

    @field_validator("height", "width")
    @classmethod
    def _multiple_of_8(cls, v: int) -> int:
        if v % 8:
            raise ValueError(f"a multiple of 8 (the IMFE encoder downsamples by up to 8), got {v}")
        return v

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if c not in ACTIONS]
        if bad or len(set(v)) != len(v):
            raise ValueError(f"distinct action names from {list(ACTIONS)}, got {v}")
        return v

    @model_validator(mode="after")
    def _ucf_root(self) -> "DataConfig":
        if self.source == "ucf101" and not self.ucf101_root:
            raise ValueError(f"source='ucf101' with ucf101_root={self.ucf101_root!r}: expected ucf101_root set to "
                             f"the dataset's folder")
        lo, hi = self.noise_std
        if not 0 <= lo <= hi <= 64:
            raise ValueError(f"noise_std={self.noise_std}: expected (low, high) with 0 <= low <= high <= 64")
        return self


class TvL1Config(_Section):
    """OpenCV ``DualTVL1OpticalFlow`` settings, used for the teacher flow *and* the latency comparison.

    OpenCV's defaults except ``nscales`` 3 and ``warps`` 3 (OpenCV: 5 and 5): at 48x48 with scale
    step 0.8, five scales go down to a 20 px image, which the ~0.5 px/frame motion of the clips does
    not need; on the quick-profile clips the flow moves by 0.04 px mean end-point error (below the
    0.063 px uint8 quantisation step) and costs 44 instead of 79 ms per pair (README)."""

    tau: float = Field(0.25, gt=0, le=1, allow_inf_nan=False)
    lambda_: float = Field(0.15, gt=0, le=10, allow_inf_nan=False, alias="lambda",
                           description="data-term weight (smaller = smoother; OpenCV default 0.15)")
    theta: float = Field(0.3, gt=0, le=1, allow_inf_nan=False)
    nscales: int = Field(3, ge=1, le=10, description="pyramid levels (OpenCV default 5; 3 at 48 px)")
    warps: int = Field(3, ge=1, le=20, description="warpings per level (OpenCV default 5)")
    epsilon: float = Field(0.01, gt=0, le=1, allow_inf_nan=False,
                           description="stopping threshold of the inner iterations (OpenCV default 0.01)")
    inner_iterations: int = Field(30, ge=1, le=1000)
    outer_iterations: int = Field(10, ge=1, le=1000)
    scale_step: float = Field(0.8, gt=0, lt=1, allow_inf_nan=False)

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)


class OpticalFlowConfig(_Section):
    clip_len: int = Field(6, ge=2, le=32, description="frames per chunk (clip_len-1 flow pairs stacked, as TSN: 6 -> 10 channels)")
    bound: float = Field(8.0, gt=0, le=64, allow_inf_nan=False, description="flow is clipped to +-bound px and quantised to uint8 (denseflow style)")
    tvl1: TvL1Config = TvL1Config()
    dis_preset: Literal["ultrafast", "fast", "medium"] = Field("medium", description="OpenCV DIS preset")
    workers: int = Field(2, ge=1, le=64, description="processes computing flow in parallel")


class StreamNetConfig(_Section):
    """The per-chunk stream CNNs (TSN analogue): RGB on the centre frame, flow on the stacked flow."""

    widths: list[Positive] = Field([16, 32, 64], min_length=1,
                                   description="channels of the residual stages (stride 2 each, each >= 1); the "
                                               "feature is widths[-1]-dimensional (TSN-R50: 2048), a multiple of 8 "
                                               "(IMFE's ResNet head, see HarConfig)")
    epochs: int = Field(20, ge=1, le=1000)
    batch_size: int = Field(32, ge=1, le=4096)
    lr: float = Field(2e-3, gt=0, le=1, allow_inf_nan=False)
    weight_decay: float = Field(1e-4, ge=0, le=1, allow_inf_nan=False)
    flip: bool = Field(True, description="horizontal-flip augmentation (flow x negated, label mirrored)")


class ImfeConfig(_Section):
    """IMFE scaled to the clip resolution (official: encoder (64,64,96,128,256), /8, compress 128,
    motion encoder 256-192-128, mid 512, ResNet-50 layer3+layer4 -> 2048)."""

    encoder_widths: list[Positive] = Field([16, 16, 24, 32, 32], min_length=5, max_length=5,
                                           description="stem, layer1, layer2, layer3, output of the RAFT feature "
                                                       "encoder (each >= 1)")
    downsample: Literal[4, 8] = Field(4, description="encoder stride (official /8 at 256x344; /4 keeps a 12x12 grid at 48x48)")
    compress_dim: int = Field(16, ge=1, le=1024, description="channels of the per-pair correlation compression")
    motion_widths: list[Positive] = Field([32, 32, 32], min_length=3, max_length=3,
                                          description="motion-encoder convs (each >= 1)")
    mid_dim: int = Field(32, ge=1, le=4096, description="1x1 mid conv before the ResNet head")
    head_blocks: list[Positive] = Field([1, 1], min_length=2, max_length=2,
                                        description="bottleneck blocks of layer3, layer4 (each >= 1)")
    epochs: int = Field(10, ge=1, le=1000, description="distillation epochs (10: the official training script)")
    batch_size: int = Field(16, ge=1, le=1024)
    lr: float = Field(1e-3, gt=0, le=1, allow_inf_nan=False)
    gamma: float = Field(0.9, gt=0, le=1, allow_inf_nan=False, description="ExponentialLR gamma, stepped 5 times per epoch (official)")
    flip: bool = Field(True, description="horizontal-flip augmentation (the teacher sees the flipped flow)")
    onnx_opset: int = Field(16, ge=11, le=21)
    distill_clips_per_class: int = Field(
        0, ge=0, le=100000,
        description="0: distil on the HAR training split (quick profile). N > 0: distil on a separate set of N "
                    "synthetic clips per class, disjoint from the HAR clips, with its own TV-L1 flow (the paper "
                    "distils on ActivityNet, not on the action data); needs data.source=synthetic")
    device: str = Field("cpu", description="torch device of the distillation: cpu, cuda, cuda:N or auto "
                                           "(cuda when available)")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", v):
            raise ValueError(f"cpu, cuda, cuda:N or auto, got {v!r}")
        return v


class TemporalConfig(_Section):
    """LSTR-style online head: long memory compressed by learned queries + a short causal window."""

    d_model: int = Field(64, ge=8, le=2048)
    heads: int = Field(4, ge=1, le=32)
    long_memory: int = Field(6, ge=0, le=4096, description="chunks of long memory before the short window")
    short_window: int = Field(2, ge=1, le=256, description="chunks in the short (work) window")
    latent_queries: int = Field(4, ge=1, le=256, description="learned queries compressing the long memory")
    dropout: float = Field(0.1, ge=0, lt=1, allow_inf_nan=False)
    epochs: int = Field(20, ge=1, le=10000,
                        description="head epochs (quick: 20; 40 gave the same accuracy at 1.7x the cost)")
    batch_size: int = Field(64, ge=1, le=65536)
    lr: float = Field(2e-3, gt=0, le=1, allow_inf_nan=False)
    weight_decay: float = Field(1e-2, ge=0, le=1, allow_inf_nan=False)
    stream_passes: int = Field(1, ge=0, le=64,
                               description="continuous streams of all training clips (seeded random order) the "
                                           "head also trains on, so that it knows windows spanning clip "
                                           "boundaries as the real-time runtime's do (0: each clip's own windows only)")

    @model_validator(mode="after")
    def _heads_divide(self) -> "TemporalConfig":
        if self.d_model % self.heads:
            raise ValueError(f"d_model={self.d_model}: expected a width divisible by heads={self.heads}")
        return self


class EvaluateConfig(_Section):
    seeds: list[Seed] = Field([0, 1, 2], min_length=1, description="seeds of the temporal heads (every source alike)")
    sources: list[Literal["tvl1", "farneback", "dis", "imfe", "rgb"]] = Field(
        ["tvl1", "farneback", "dis", "imfe", "rgb"], min_length=1, description="motion sources compared")
    latency_chunks: int = Field(12, ge=1, le=10000, description="test chunks timed per motion source")
    stream_frames: int = Field(180, ge=6, le=100000,
                               description="frames pushed through the streaming runtime: the test clips back to "
                                           "back, at most as many frames as the test split has (else an error)")
    stream_fps: float = Field(30.0, ge=STREAM_FPS_MIN, le=STREAM_FPS_MAX, allow_inf_nan=False,
                              description="frame rate of the streaming benchmark")
    threads: int = Field(1, ge=1, le=64, description="threads of every motion source in the latency runs "
                                                      "(OpenCV, torch, onnxruntime alike)")
    queue_size: int = Field(2, ge=1, le=1000, description="camera buffer (frames) of the streaming runtime")

    @model_validator(mode="after")
    def _distinct(self) -> "EvaluateConfig":
        for name in ("seeds", "sources"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"evaluate.{name}={values}: expected distinct values (a repeat would count one "
                                 f"head twice in the mean and the std)")
        return self


class HarConfig(ComponentConfig):
    paper: ClassVar[str] = "har"

    data: DataConfig = DataConfig()
    opticalflow: OpticalFlowConfig = OpticalFlowConfig()
    streams: StreamNetConfig = StreamNetConfig()
    imfe: ImfeConfig = ImfeConfig()
    temporal: TemporalConfig = TemporalConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    torch_threads: int = Field(2, ge=1, le=256, description=(
        "torch intra-op threads for training; the evaluate stage trains its (source, seed) heads in up to "
        "this many processes of one thread each instead (tiny steps: a 2nd thread gains ~6 %)"))

    @model_validator(mode="after")
    def _chunking(self) -> "HarConfig":
        d, L = self.data, self.opticalflow.clip_len
        if d.source == "synthetic" and d.frames_per_clip % L:
            raise ValueError(f"data.frames_per_clip={d.frames_per_clip}: expected a multiple of opticalflow.clip_len={L}")
        if self.imfe.distill_clips_per_class and d.source != "synthetic":
            raise ValueError(f"imfe.distill_clips_per_class={self.imfe.distill_clips_per_class} renders a synthetic "
                             f"distillation set; expected data.source=synthetic (got {d.source!r}) or 0")
        if d.height % self.imfe.downsample or d.width % self.imfe.downsample:
            raise ValueError(f"data.height={d.height}, data.width={d.width}: expected a frame size divisible by "
                             f"imfe.downsample={self.imfe.downsample}")
        dim = self.streams.widths[-1]
        if dim % 8:   # imfe.ImfeNet: the teacher's feature is IMFE's output, its ResNet head needs dim // 8 * 8 == dim
            raise ValueError(f"streams.widths[-1]={dim} (streams.widths={self.streams.widths}): expected a multiple "
                             f"of 8; it is the teacher's feature dimension, which IMFE regresses (its layer3 "
                             f"outputs 4 * (widths[-1] // 8) channels, its layer4 takes widths[-1] // 2)")
        return self
