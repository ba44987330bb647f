"""Parameters of the FamilySeer component (the ``familyseer`` section of ``params.yaml``).

Defaults are the **quick profile**: one small CNN, three policies x three seeds, a few hundred
measured trials in total (about 6-7 minutes on an idle 2-core CPU). ``profiles/full.yaml`` is the
paper-scale experiment (five models, every policy, paper round sizes).
"""
from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from components.base import MAX_TIMEOUT_S, ComponentConfig, Seed

#: models the zoo can build (components/familyseer/zoo.py)
ModelName = Literal["mlp_tiny", "resnet_tiny", "resnet", "mobilenetv2", "bert", "unet", "gpt2"]
#: tuning policies (components/familyseer/tuning.py: POLICIES)
PolicyName = Literal["gradient", "round_robin", "familyseer", "familyseer_hash", "familyseer_ind",
                     "familyseer_no_foresee"]
#: the policies with foresee rounds (tuning.POLICIES[...].foresee; a test keeps the two in step)
FORESEE_POLICIES = frozenset({"familyseer", "familyseer_hash", "familyseer_ind"})
#: a thread count (the same bounds as the other thread settings)
Threads = Annotated[int, Field(ge=1, le=512)]
#: a tuning run's seed (seed x 1000 + tune seed) must be below this: numpy's np.random.seed range
RUN_SEED_LIMIT = 2 ** 32


class ZooConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    models: list[ModelName] = Field(["resnet_tiny"], min_length=1,
                                    description="models to import, extract tasks from and tune")
    complex_tasks_only: bool = Field(True, description="tune only tasks with a reduction block (Ansor's "
                                     "EXTRACT_COMPLEX_TASK_ONLY rule, used by the FamilySeer artifact)")

    @model_validator(mode="after")
    def _unique(self) -> "ZooConfig":
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models must be unique, got {self.models}")
        return self


class SearchConfig(BaseModel):
    """MetaSchedule evolutionary search; identical for every policy."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    population_size: int = Field(64, ge=8, le=4096, description="evolutionary-search population")
    init_min_unmeasured: int = Field(32, ge=1, description="minimum unmeasured schedules sampled per round")
    genetic_num_iters: int = Field(2, ge=1, le=16, description="genetic iterations per round")
    eps_greedy: float = Field(0.05, ge=0.0, le=1.0, description="share of random picks per round")

    @model_validator(mode="after")
    def _fits(self) -> "SearchConfig":
        if self.init_min_unmeasured > self.population_size:
            raise ValueError(f"init_min_unmeasured={self.init_min_unmeasured} must be <= "
                             f"population_size={self.population_size}")
        return self


class CostModelConfig(BaseModel):
    """XGBoost cost models (MetaSchedule's XGBModel); the same settings for the global and family models."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    warmup_rounds_per_task: float = Field(1.0, ge=0.0, le=100.0, description=(
        "a model predicts randomly until it holds (tasks sharing it) x trials_per_round x this many "
        "samples (Ansor and the FamilySeer artifact: num_warmup_sample = |tasks| x measures_per_round)"))
    adaptive_training: bool = Field(False, description="MetaSchedule's skip-retraining heuristic; False = "
                                    "retrain after every round (FamilySeer)")
    early_stopping_rounds: int = Field(50, ge=1, description="XGBoost early stopping (MetaSchedule default 50)")
    threads: int = Field(1, ge=1, le=512, description="XGBoost threads (1: small training sets train fastest "
                         "single-threaded, and OpenMP spin-waits make 2 threads ~10x slower on a busy machine)")
    feature_threads: int = Field(2, ge=1, le=512, description=(
        "threads of the cost models' feature extraction (MetaSchedule's PerStoreFeature would take the "
        "search's thread count; the features do not depend on it, so one search thread need not mean one "
        "extraction thread)"))


class TuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    policies: list[PolicyName] = Field(["familyseer", "gradient", "round_robin"], min_length=1,
                                       description="task-scheduling policies, each at the same trial budget")
    seeds: list[Seed] = Field([0, 1, 2], min_length=1, description="tuning seeds (each policy runs each seed)")
    trials_per_task: int = Field(12, ge=1, description="global trial budget = trials_per_task x tasks "
                                 "(paper: 900 x (tasks + 1))")
    trials_per_round: int = Field(8, ge=1, le=512, description="measurements per main round (paper: 64)")
    foresee_trials: int = Field(4, ge=0, description="measurements in a foresee round on a sibling (paper: 16)")
    foresee_random: int = Field(0, ge=0, description="of which eps-greedy random picks (the foresee round's own "
                                "search is given the eps_greedy that returns exactly this many: "
                                "scheduler.foresee_eps_greedy; paper: 3)")
    alpha: float = Field(0.2, ge=0.0, le=1.0, description="gradient scheduler alpha (MetaSchedule default)")
    window_size: int = Field(3, ge=1, description="gradient scheduler backward window (MetaSchedule default)")
    target_cores: int = Field(2, ge=1, le=512, description=(
        "num-cores of the llvm target, and the threads the tuning runner and the compile stage run the "
        "kernels on (TVM_NUM_THREADS, which TVM caps at the logical CPUs and the fastest cores; TVM's own "
        "default is half the logical CPUs)"))
    search_threads: int = Field(1, ge=1, le=512, description=(
        "threads of the evolutionary search. 1: a seed fixes the search's picks, so every policy measures "
        "the same warm-up schedules and a repeat measures the same first rounds. >1 (the full profile): "
        "faster on a many-core node, but the picks then depend on thread timing, so seeds are not "
        "reproducible and the policies' runs of a seed are not paired"))
    builder_workers: int = Field(2, ge=1, le=512, description="parallel build processes")
    build_timeout_s: float = Field(60.0, gt=0, le=MAX_TIMEOUT_S, description="per-candidate build timeout (then recorded, skipped)")
    run_timeout_s: float = Field(10.0, gt=0, le=MAX_TIMEOUT_S, description="per-candidate run timeout (then recorded, skipped)")
    repeat: int = Field(3, ge=1, description="measurements per candidate (median used)")
    min_repeat_ms: int = Field(20, ge=0, description="minimum time of one measurement (ms)")
    replay: bool = Field(True, description="reuse a run's stored records when its fingerprint matches "
                         "instead of re-measuring")
    search: SearchConfig = SearchConfig()
    cost_model: CostModelConfig = CostModelConfig()

    @model_validator(mode="after")
    def _consistent(self) -> "TuneConfig":
        if len(set(self.policies)) != len(self.policies):
            raise ValueError(f"policies must be unique, got {self.policies}")
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be unique non-negative integers, got {self.seeds}")
        if self.foresee_random > self.foresee_trials:
            raise ValueError(f"foresee_random={self.foresee_random} must be <= foresee_trials={self.foresee_trials}")
        if self.foresee_trials > self.trials_per_round:
            raise ValueError(f"foresee_trials={self.foresee_trials} must be <= trials_per_round="
                             f"{self.trials_per_round} (a foresee round is a short round)")
        if self.trials_per_task < self.trials_per_round:
            raise ValueError(f"trials_per_task={self.trials_per_task} < trials_per_round={self.trials_per_round}: "
                             f"the first pass (one round per task) would not fit the budget and some tasks would "
                             f"never be measured")
        if (self.trials_per_task == self.trials_per_round and self.foresee_trials > 0
                and any(p in FORESEE_POLICIES for p in self.policies)):
            raise ValueError(f"trials_per_task={self.trials_per_task} == trials_per_round={self.trials_per_round} "
                             f"with foresee_trials={self.foresee_trials}: the first pass (one round per task) "
                             f"spends the whole budget, so no foresee round of "
                             f"{[p for p in self.policies if p in FORESEE_POLICIES]} could ever run; expected "
                             f"trials_per_task > trials_per_round, or foresee_trials=0")
        # foresee_random needs no cap from the main rounds' eps-greedy share: a foresee round runs a search of
        # its own whose eps_greedy (scheduler.foresee_eps_greedy) returns exactly foresee_random random picks
        return self


class EvaluateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    baseline: PolicyName = Field("gradient", description="policy whose final latency FamilySeer must reach "
                                 "(the claims are judged for gradient only: evaluation.metric_keys)")
    method: PolicyName = Field("familyseer", description="policy whose search-time speed-up is reported "
                               "(the claims are judged for familyseer only: evaluation.metric_keys)")
    latency_repeat: int = Field(15, ge=3, description="end-to-end latency samples per build (p50/p99)")
    latency_min_repeat_ms: int = Field(25, ge=1, description="minimum time of one latency sample (ms)")
    torch_threads: list[Threads] = Field([1, 2], min_length=1, description="thread counts tried for the PyTorch "
                                     "eager baseline (the fastest is reported; OpenMP spin-waits make 2 threads "
                                     "slow on a busy machine)")
    ranking_min_records: int = Field(8, ge=2, description="held-out records a task needs to be scored")


class FamilySeerConfig(ComponentConfig):
    paper: ClassVar[str] = "familyseer"
    zoo: ZooConfig = ZooConfig()
    tune: TuneConfig = TuneConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    @model_validator(mode="after")
    def _evaluate_policies_tuned(self) -> "FamilySeerConfig":
        for key in ("baseline", "method"):
            policy = getattr(self.evaluate, key)
            if policy not in self.tune.policies:
                raise ValueError(f"evaluate.{key}={policy!r} is not among tune.policies={self.tune.policies}")
        if self.evaluate.baseline == self.evaluate.method:
            raise ValueError(f"evaluate.baseline={self.evaluate.baseline!r} equals evaluate.method: expected two "
                             f"different policies (the method's speed-up is measured against the baseline)")
        return self

    @model_validator(mode="after")
    def _run_seeds_fit_numpy(self) -> "FamilySeerConfig":
        # the tune stage seeds a run of seed s with seed x 1000 + s (flows/familyseer.py, _run_seed), which
        # numpy's global generator (np.random.seed, tuning._seed_everything) takes only below 2**32
        top = self.seed * 1000 + max(self.tune.seeds)
        if top >= RUN_SEED_LIMIT:
            raise ValueError(f"seed={self.seed} and tune.seeds={self.tune.seeds} give the run seed seed x 1000 + "
                             f"max(tune.seeds) = {top}; expected seed x 1000 + max(tune.seeds) < 2**32 = "
                             f"{RUN_SEED_LIMIT} (the tune stage seeds numpy's generator with it)")
        return self
