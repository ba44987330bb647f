"""Parameters of the Skrull component (the ``skrull`` section of params.yaml). Defaults = quick profile."""
from __future__ import annotations

from typing import Annotated, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from components.base import MAX_TIMEOUT_S, ComponentConfig

Dataset = Literal["wikipedia", "lmsyschat1m", "chatqa2", "corpus"]
PaperModel = Literal["qwen2.5-0.5b", "qwen2.5-7b"]
PositiveInt = Annotated[int, Field(ge=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class CorpusConfig(_Strict):
    root: str | None = Field(None, description="folder of Python sources; null = this interpreter's site-packages")
    max_files: int = Field(800, ge=1, description="documents sampled (seeded) from the sorted list of .py files")
    min_bytes: int = Field(64, ge=1, description="skip files shorter than this (empty __init__.py etc.)")
    vocab_size: int = Field(2048, ge=260, le=65536, description="byte-level BPE vocabulary (also the model's)")
    bpe_train_mb: float = Field(3.0, gt=0, description="MB (10^6 bytes of UTF-8) of the selected documents the "
                                                        "BPE is trained on, whole documents in selection order")


class DataConfig(_Strict):
    corpus: CorpusConfig = CorpusConfig()
    samples_per_distribution: int = Field(50_000, ge=1000, description="lengths drawn from each Table 1 distribution")


class ModelConfig(_Strict):
    """The small randomly initialised Qwen2 decoder of the real runs and of the CPU profile."""
    hidden_size: int = Field(64, ge=8, description="hidden size h")
    intermediate_size: int = Field(176, ge=8, description="MLP width")
    num_layers: int = Field(4, ge=1, description="decoder layers")
    num_heads: int = Field(4, ge=1, description="attention heads")
    num_kv_heads: int = Field(2, ge=1, description="K/V heads (GQA)")

    @model_validator(mode="after")
    def _heads(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not divisible by num_kv_heads={self.num_kv_heads}")
        return self


class ProfilingConfig(_Strict):
    """Offline profiling on this machine (stage ``profile``)."""
    cp: int = Field(2, ge=2, le=64, description="CP degree the compute profile emulates (= train.cp; >= 2: the "
                                                "gloo collectives of the cost model are measured on cp processes)")
    lengths: list[int] = Field([16, 32, 64, 128, 256, 512, 1024, 2048], min_length=3,
                               description="sequence lengths profiled; each with n = 1, 2, 4, … ≤ tokens_per_config / S "
                                           "sequences per micro-batch")
    tokens_per_config: int = Field(1024, ge=16, description="most tokens of a packed micro-batch of short sequences "
                                                            "(the largest n of a length S is tokens_per_config // S)")
    repeats: int = Field(5, ge=1, le=100, description="timed passes over the whole grid, interleaved; a point's time "
                                                      "is the fastest of them")
    activation_budget_mb: float = Field(24.0, gt=0, description="activation memory per rank in MiB (2^20 "
                                                                   "bytes) → BucketSize C")
    comm_sizes_kb: list[int] = Field([4, 64, 256, 1024, 4096], min_length=3, description="collective sizes")
    comm_repeats: int = Field(10, ge=1, description="timed passes over every (size, collective), interleaved in a "
                                                    "seeded order; a size's time is the fastest of them")

    @field_validator("lengths", "comm_sizes_kb")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(x < 1 for x in v) or len(set(v)) != len(v):
            raise ValueError(f"{v}: expected distinct positive integers")
        return sorted(v)

    @model_validator(mode="after")
    def _design(self):
        if 2 * min(self.lengths) > self.tokens_per_config:
            raise ValueError(f"tokens_per_config={self.tokens_per_config} < 2 × the shortest length {min(self.lengths)}: "
                             f"every length would be profiled with one sequence per micro-batch only, so the "
                             f"per-sequence and per-micro-batch costs could not be told apart")
        return self


class ParallelSetting(_Strict):
    dp: int = Field(ge=1, le=1024, description="data-parallel degree")
    cp: int = Field(ge=1, le=1024, description="context-parallel degree")
    batch_size: int = Field(ge=1, description="sequences per DP rank per step (global batch = dp × batch_size)")


class PaperSimConfig(_Strict):
    """Simulation at paper scale (H100 presets)."""
    models: list[PaperModel] = Field(["qwen2.5-0.5b", "qwen2.5-7b"], min_length=1)
    datasets: list[Dataset] = Field(["wikipedia", "lmsyschat1m", "chatqa2", "corpus"], min_length=1)
    setting: ParallelSetting = ParallelSetting(dp=4, cp=8, batch_size=64)
    overrides: dict[str, ParallelSetting] = Field(
        {"qwen2.5-7b/chatqa2": ParallelSetting(dp=2, cp=16, batch_size=40)},
        description="per '<model>/<dataset>' settings (the paper's 7B + ChatQA2 run)")
    num_batches: int = Field(10, ge=1, description="global batches simulated per (model, dataset)")
    achieved_tflops: float = Field(400.0, gt=0, description="[R] H100 throughput assumed by the preset")

    @field_validator("overrides")
    @classmethod
    def _keys(cls, v: dict[str, ParallelSetting]) -> dict[str, ParallelSetting]:
        for key in v:
            model, _, data = key.partition("/")
            if model not in get_args(PaperModel) or data not in get_args(Dataset):
                raise ValueError(f"override key {key!r}: expected '<model>/<dataset>' with a model in "
                                 f"{list(get_args(PaperModel))} and a dataset in {list(get_args(Dataset))}")
        return v

    @model_validator(mode="after")
    def _overrides_apply(self):
        # An override for a model or dataset that is not simulated would be silently ignored. Checked
        # when overrides are given (params.yaml always gives them); the default one, for the paper's
        # 7B + ChatQA2 run, simply does not apply to a run without that model or dataset.
        if "overrides" not in self.model_fields_set:
            return self
        for key in self.overrides:
            model, _, data = key.partition("/")
            if model not in self.models or data not in self.datasets:
                raise ValueError(f"override key {key!r} names a model or dataset that is not simulated; expected "
                                 f"'<model>/<dataset>' with the model in models={self.models} and the dataset in "
                                 f"datasets={self.datasets} (remove the override or add them)")
        return self


class LocalSimConfig(_Strict):
    """Simulation at local scale with the profiled CPU cost model."""
    datasets: list[Dataset] = Field(["wikipedia", "lmsyschat1m", "chatqa2", "corpus"], min_length=1)
    setting: ParallelSetting = ParallelSetting(dp=1, cp=2, batch_size=64)
    length_scale: int = Field(32, ge=1, description="CPU down-scaling: lengths divided by this (notes §6.4)")
    num_batches: int = Field(10, ge=1)


class SensitivityConfig(_Strict):
    """Paper's sensitivity study (Qwen2.5-0.5B, ChatQA2, DP=1, CP=8)."""
    batch_sizes: list[PositiveInt] = Field([8, 16, 32, 64], min_length=1, description="sequences per batch (>= 1)")
    bucket_k_tokens: list[PositiveInt] = Field([8, 16, 26, 32], min_length=1,
                                               description="BucketSize C in K tokens (>= 1); every row's batches "
                                                           "are truncated to what the smallest C can hold")
    num_batches: int = Field(4, ge=1)


class ILPConfig(_Strict):
    """Exact optimum vs the heuristic on small instances, twice: with the paper preset ``model`` at
    ``dp`` × ``cp`` (the claimed gap), and with the profiled CPU model at local scale (``local_sim``'s
    datasets, length scale and parallel degrees; reported); ``instances``, ``sequences`` and
    ``time_limit_s`` apply to both."""
    instances: int = Field(6, ge=0, description="small instances solved exactly per cost model (0 = skip)")
    sequences: int = Field(8, ge=2, le=16, description="sequences per instance")
    dp: int = Field(2, ge=1, le=8, description="DP degree of the paper-preset instances")
    cp: int = Field(4, ge=1, le=8, description="CP degree of the paper-preset instances")
    model: PaperModel = Field("qwen2.5-0.5b", description="paper preset of the claimed gap")
    time_limit_s: float = Field(10.0, gt=0, le=MAX_TIMEOUT_S, description="HiGHS time limit per instance")

    @model_validator(mode="after")
    def _enough_sequences(self):
        if self.instances and self.sequences < self.dp:
            raise ValueError(f"sequences={self.sequences} < dp={self.dp}: every DP rank needs a sequence")
        return self


class TrainConfig(_Strict):
    """Real 2-process runs: DeepSpeed ZeRO-2 over gloo, baseline vs Skrull on the same batches."""
    dp: int = Field(1, ge=1, le=8, description="data-parallel degree of the real run")
    cp: int = Field(2, ge=2, le=8, description="context-parallel degree (processes = dp × cp; >= 2: the CP "
                                               "group's collectives are profiled on cp processes)")
    global_batch: int = Field(64, ge=1, description="sequences per optimizer step")
    steps: int = Field(8, ge=1, description="timed steps per variant (median of the paired per-step ratios)")
    warmup_steps: int = Field(1, ge=0, description="untimed steps per variant first")
    length_scale: int = Field(32, ge=1, description="corpus documents keep their first ceil(n/scale) tokens")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    timeout_s: float = Field(1800.0, gt=0, le=MAX_TIMEOUT_S, description="the launch is killed after this (s)")
    variants: list[Literal["deepspeed", "packed", "skrull"]] = Field(
        ["deepspeed", "packed", "skrull"], min_length=2, description="schedules trained side by side")

    @model_validator(mode="after")
    def _degrees(self):
        if self.global_batch < self.dp:
            raise ValueError(f"global_batch={self.global_batch} < dp={self.dp}: every DP rank needs a sequence")
        if self.dp * self.cp > 8:
            raise ValueError(f"dp×cp={self.dp * self.cp} processes; expected <= 8 on one machine")
        if "skrull" not in self.variants or "deepspeed" not in self.variants or len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants={self.variants}: expected distinct names including 'deepspeed' and 'skrull'")
        return self


class SkrullConfig(ComponentConfig):
    paper: ClassVar[str] = "skrull"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    profiling: ProfilingConfig = ProfilingConfig()
    paper_sim: PaperSimConfig = PaperSimConfig()
    local_sim: LocalSimConfig = LocalSimConfig()
    sensitivity: SensitivityConfig = SensitivityConfig()
    ilp: ILPConfig = ILPConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _consistent(self):
        if self.profiling.cp != self.train.cp:
            raise ValueError(f"profiling.cp={self.profiling.cp} differs from train.cp={self.train.cp}; the CPU cost "
                             f"model must be profiled for the CP degree it schedules")
        if self.local_sim.setting.cp != self.train.cp or self.local_sim.setting.dp != self.train.dp:
            raise ValueError(f"local_sim.setting (dp={self.local_sim.setting.dp}, cp={self.local_sim.setting.cp}) "
                             f"differs from train (dp={self.train.dp}, cp={self.train.cp}); expected the same "
                             f"parallel degrees")
        if self.ilp.instances and self.ilp.sequences < self.local_sim.setting.dp:
            raise ValueError(f"ilp.sequences={self.ilp.sequences} < local_sim.setting.dp={self.local_sim.setting.dp}: "
                             f"the local-scale ILP instances need a sequence per DP rank")
        return self
