"""The driver every paper flow uses to run its stages.

A paper flow (``flows/<paper>.py``) is a Prefect flow taking the component's config model and a list
of stage names; each stage is a Prefect task ``fn(ctx: StageContext) -> dict | None``. The driver

1. checks the stage names,
2. makes sure the paper's DVC data stage output is present and matches ``dvc.lock`` when the run
   needs data but does not produce it (:func:`tasks.dvc.ensure_stage`),
3. opens the paper's MLflow experiment and one parent run for the flow run (config as params; tags:
   git commit, DVC data hash, Prefect flow-run id, profile, stages),
4. runs the stages in order, logging each stage's wall time (``stage_seconds.<stage>``),
5. marks the MLflow run FAILED and re-raises if a stage fails.

Stages write their DVC outputs through :mod:`tasks.io` (atomic), into ``ctx.paths``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

from components.base import ComponentConfig, ConfigError
from tasks import dvc as dvc_tasks
from tasks.paths import PaperPaths, paper_paths, repo_root
from tasks.tracking import Run, Tracker

C = TypeVar("C", bound=ComponentConfig)


def get_logger(name: str) -> logging.Logger:
    """Prefect's run logger inside a flow/task run (shows in the Prefect UI), else a std logger."""
    try:
        from prefect import get_run_logger

        return get_run_logger()  # type: ignore[return-value]
    except Exception:
        logger = logging.getLogger(name)
        if not logging.getLogger().handlers and not logger.handlers:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return logger


@dataclass
class StageContext:
    """What a stage function receives."""

    paper: str
    stage: str
    config: Any  # the component's config model instance
    paths: PaperPaths
    run: Run  # the MLflow parent run of this flow run
    results: dict[str, Any] = field(default_factory=dict)  # return values of earlier stages in this run

    @property
    def log(self) -> logging.Logger:
        return get_logger(f"paperworks.{self.paper}.{self.stage}")

    def progress(self, msg: str, *args: Any) -> None:
        """Progress line on long work (Prefect UI and the terminal)."""
        self.log.info(msg, *args)

    # shortcuts onto the MLflow parent run
    def child(self, name: str, params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None):
        return self.run.child(name, params=params, tags=tags)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self.run.log_metrics(metrics, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.run.log_artifact(path, artifact_path)

    def log_table(self, rows: Sequence[Mapping[str, Any]], name: str) -> None:
        self.run.log_table(rows, name)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.run.log_figure(figure, artifact_file)


StageFn = Callable[[StageContext], Any]


def stage_task(fn: Callable[..., Any] | None = None, *, name: str | None = None, **kwargs: Any):
    """``@stage_task``: a Prefect task for a stage (no input caching: the context is not hashable)."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    def wrap(f: Callable[..., Any]):
        return task(f, name=name or f.__name__.replace("_", "-"), cache_policy=NO_CACHE, **kwargs)

    return wrap(fn) if fn is not None else wrap


def flow_config(model: type[C], config: C | Mapping[str, Any] | None) -> C:
    """The config a flow runs with: ``None`` means the checkout's ``params.yaml`` section."""
    from tasks.params import load_config

    if config is None:
        return load_config(model)
    if isinstance(config, model):
        return config
    if isinstance(config, Mapping):
        from components.base import resolve_section

        return resolve_section(model, {}, config)  # type: ignore[return-value]
    raise ConfigError(f"{model.paper}: config of type {type(config).__name__}; expected {model.__name__} or a mapping")


def _at(tree: Any, dotted: str) -> Any:
    for part in dotted.split(".") if dotted else []:
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def check_data_config(paper: str, config: ComponentConfig, stage: str, root: Path) -> None:
    """ConfigError when ``config`` differs from the checkout's ``params.yaml`` in a parameter the data
    stage ``stage`` is built from (its ``params`` in ``dvc.yaml``, profile included).

    A run that does not include the data stage reads ``data/<paper>`` as ``dvc.lock`` records it, which
    is built from ``params.yaml``: a run with another profile, ``--set data.*`` or a deployment's config
    would otherwise train on data made for other parameters (and :func:`tasks.dvc.ensure_stage` would
    rebuild the data this run's own earlier data stage made, from ``params.yaml``). Nothing to check
    inside ``dvc repro`` (the config is ``params.yaml``) or without a ``dvc.yaml``."""
    from components.io import read_yaml_mapping
    from tasks.params import load_config

    if dvc_tasks.under_dvc() or not (root / "dvc.yaml").is_file():
        return
    entry = (read_yaml_mapping(root / "dvc.yaml", "the DVC pipeline file").get("stages") or {}).get(stage) or {}
    keys = [k for k in entry.get("params") or [] if isinstance(k, str) and (k == paper or k.startswith(paper + "."))]
    ours = config.model_dump(mode="json")
    theirs = load_config(type(config), params_path=root / "params.yaml").model_dump(mode="json")
    differ = [(key, _at(ours, key[len(paper) + 1:]), _at(theirs, key[len(paper) + 1:])) for key in keys]
    differ = [d for d in differ if d[1] != d[2]]
    if differ:
        what = "; ".join(f"{k} = {a!r} in this run, {b!r} in params.yaml" for k, a, b in differ)
        raise ConfigError(f"{paper}: this run's config differs from params.yaml where the data stage {stage} is "
                          f"built from it ({what}); the data in data/{paper} would not match. Expected the same "
                          f"values, or a run that includes the data stage (stages 'all' or '{stage.split('_', 1)[1]}"
                          f",...'), or the values set in params.yaml and `dvc repro {stage}`")


def run_paper(paper: str, config: ComponentConfig, stages: Sequence[str] | None,
              stage_fns: Mapping[str, StageFn], *, data_stage: str | None = "data",
              root: Path | None = None, description: str | None = None) -> dict[str, Any]:
    """Run ``stages`` (default: all, in declaration order) of ``paper``; return stage results."""
    all_stages = list(stage_fns)
    if stages is not None and not isinstance(stages, str) and len(stages) == 0:
        raise ConfigError(f"{paper} stages=[]: no stage to run; expected a non-empty subset of {all_stages}, "
                          f"or None (every stage)")
    stages = list(stages) if stages else all_stages
    unknown = [s for s in stages if s not in stage_fns]
    if unknown:
        raise ConfigError(f"{paper} stages={unknown}: unknown stage; expected a subset of {all_stages}")
    stages = [s for s in all_stages if s in stages]  # declaration order
    root = root or repo_root()
    paths = paper_paths(paper, root)
    log = get_logger(f"paperworks.{paper}")

    makes_data = bool(data_stage) and data_stage in stages
    if data_stage and data_stage in all_stages and not makes_data:
        check_data_config(paper, config, f"{paper}_{data_stage}", root)
        how = dvc_tasks.ensure_stage(f"{paper}_{data_stage}", root)
        log.info("data for %s: %s", paper, how)

    if description is None:
        from tasks.report import experiment_description

        description = experiment_description(paper, root)
    tracker = Tracker(paper, root)
    tags = {"profile": getattr(config, "profile", "quick"), "stages": ",".join(stages),
            # the lock's hash names the data this run reads; a run that makes its data has no hash yet
            "dvc_data_hash": ("made by this run" if makes_data else dvc_tasks.data_hash(f"{paper}_{data_stage}", root))
            if data_stage else "none"}
    results: dict[str, Any] = {}
    with tracker.parent_run(f"{paper}:{'+'.join(stages)}", config=config, tags=tags,
                            description=description) as run:
        for stage in stages:
            ctx = StageContext(paper=paper, stage=stage, config=config, paths=paths, run=run, results=results)
            log.info("stage %s/%s: started", paper, stage)
            t0 = time.perf_counter()
            results[stage] = stage_fns[stage](ctx)
            dt = time.perf_counter() - t0
            run.log_metrics({f"stage_seconds.{stage}": dt})
            log.info("stage %s/%s: done in %.1f s", paper, stage, dt)
        results["_mlflow_run_id"] = run.run_id
    return results
