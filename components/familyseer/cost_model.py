"""Per-family cost models: one XGBoost model per subgraph family, shared by the family's tasks.

In the artifact (``make_search_policies``) every ``SketchPolicy`` of a family receives the *same*
``XGBModel`` object, created with ``num_warmup_sample = |family| x num_measures_per_round``; every
measurement of any member updates it ("purified training samples"), and it ranks the candidates of
every member. MetaSchedule gives the task scheduler one ``CostModel`` for all tasks, so
:class:`FamilyCostModel` is that one object: it routes ``update`` and ``predict`` by the tuning
context's task name to the XGBoost model of the task's family.

The baseline's *global* model is :func:`make_xgb` with ``members = number of tasks`` — the same
MetaSchedule ``XGBModel`` class and settings, so the two arms differ only in what each model is
trained on.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from components.familyseer.config import CostModelConfig


_XGB: Any = None


def _xgb_class():
    """MetaSchedule's ``XGBModel`` that does not train while it is still in warm-up.

    ``XGBModel.predict`` returns random scores until ``num_warmup_samples`` samples are in, so a booster
    trained before that is never used; upstream trains it anyway after every update. Skipping those
    trainings changes no prediction and saves most XGBoost time of a small-budget run.
    """
    global _XGB
    if _XGB is None:
        from tvm.ir.utils import derived_object
        from tvm.s_tir.meta_schedule.cost_model import XGBModel

        @derived_object
        class WarmupAwareXGBModel(XGBModel._cls):  # type: ignore[name-defined,misc]
            def _train(self, xs, ys) -> None:
                if self.data_size < self.num_warmup_samples:
                    return
                super()._train(xs, ys)

        _XGB = WarmupAwareXGBModel
    return _XGB


_EXTRACTOR: Any = None


def _extractor_class():
    global _EXTRACTOR
    if _EXTRACTOR is None:
        from tvm.ir.utils import derived_object
        from tvm.s_tir.meta_schedule import TuneContext
        from tvm.s_tir.meta_schedule.feature_extractor import PerStoreFeature, PyFeatureExtractor

        from components.familyseer.scheduler import module_hash

        @derived_object
        class StoreFeatures(PyFeatureExtractor):
            """MetaSchedule's ``PerStoreFeature`` (the XGBModel default, same settings) on ``threads``
            threads, optionally with a cache.

            - ``threads``: ``PerStoreFeature`` runs on the tuning context's thread count, which is also
              the evolutionary search's; with one search thread (reproducible picks) the features
              would be extracted on one core. They are computed per candidate and written to the
              candidate's slot, so the thread count changes no value (tested).
            - ``cache``: features keyed by (task name, structural hash of the candidate's scheduled
              module), for callers that present the same candidates again (the leave-one-seed-out
              ranking evaluation trains and scores several models on one set of records).
            """

            def __init__(self, threads: int, cache: bool = False) -> None:
                super().__init__()
                self.inner = PerStoreFeature()
                self.threads = int(threads)
                self.contexts: dict[str, tuple[Any, Any]] = {}
                self.cache: dict[tuple[str, int], Any] | None = {} if cache else None
                self.hits = 0

            def _context(self, context: Any) -> Any:
                name = str(context.task_name)
                held = self.contexts.get(name)
                if held is None or not held[0].same_as(context.mod):
                    held = (context.mod, TuneContext(mod=context.mod, target=context.target, task_name=name,
                                                     num_threads=self.threads))
                    self.contexts[name] = held
                return held[1]

            def extract_from(self, context: Any, candidates: list) -> list:
                ctx = self._context(context)
                if self.cache is None:
                    return list(self.inner.extract_from(ctx, candidates))
                name = str(context.task_name)
                keys = [(name, module_hash(c.sch.mod)) for c in candidates]
                todo = [i for i, k in enumerate(keys) if k not in self.cache]
                self.hits += len(keys) - len(todo)
                if todo:
                    for i, feats in zip(todo, self.inner.extract_from(ctx, [candidates[i] for i in todo])):
                        self.cache[keys[i]] = feats
                return [self.cache[k] for k in keys]

        _EXTRACTOR = StoreFeatures
    return _EXTRACTOR


def store_features(threads: int, cache: bool = False):
    """A :class:`StoreFeatures` extractor (see :func:`_extractor_class`)."""
    from components.familyseer.measure import lean_tensor_intrinsics

    lean_tensor_intrinsics()
    return _extractor_class()(threads, cache)


def make_xgb(cfg: CostModelConfig, members: int, trials_per_round: int, threads: int, extractor: Any = None):
    """MetaSchedule's ``XGBModel`` with the warm-up rule of Ansor / the artifact; ``extractor``: its
    feature extractor (default: MetaSchedule's ``PerStoreFeature`` on the tuning context's threads)."""
    from components.familyseer.measure import lean_tensor_intrinsics

    lean_tensor_intrinsics()
    from tvm.s_tir.meta_schedule.cost_model.xgb_model import XGBConfig

    return _xgb_class()(
        extractor=extractor if extractor is not None else "per-store-feature",
        config=XGBConfig(nthread=threads),
        num_warmup_samples=int(round(members * trials_per_round * cfg.warmup_rounds_per_task)),
        early_stopping_rounds=cfg.early_stopping_rounds,
        verbose_eval=10_000,  # silent: MetaSchedule logs every N boosting rounds
        adaptive_training=cfg.adaptive_training,
    )


def _family_cost_model_class():
    from components.familyseer.measure import lean_tensor_intrinsics

    lean_tensor_intrinsics()
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.cost_model import PyCostModel

    @derived_object
    class FamilyCostModel(PyCostModel):
        """One cost model per family; ``update``/``predict`` go to the model of the context's family.

        Parameters
        ----------
        family_of_task : task name -> family key
        models : family key -> CostModel (normally MetaSchedule ``XGBModel``)
        """

        def __init__(self, family_of_task: Mapping[str, str], models: Mapping[str, Any]) -> None:
            super().__init__()
            missing = sorted(set(family_of_task.values()) - set(models))
            if missing:
                raise ValueError(f"no cost model for families {missing}")
            self.family_of_task = dict(family_of_task)
            self.models = dict(models)
            self.updates: dict[str, int] = {k: 0 for k in self.models}  # samples routed per family

        def family(self, context: Any) -> str:
            name = str(context.task_name)
            if name not in self.family_of_task:
                raise KeyError(f"task {name!r} belongs to no family (known: {sorted(self.family_of_task)})")
            return self.family_of_task[name]

        def update(self, context: Any, candidates: list, results: list) -> None:
            fam = self.family(context)
            self.updates[fam] += len(candidates)
            self.models[fam].update(context, candidates, results)

        def predict(self, context: Any, candidates: list) -> np.ndarray:
            return np.asarray(self.models[self.family(context)].predict(context, candidates), dtype="float64")

        def save(self, path: str) -> None:
            os.makedirs(path, exist_ok=True)
            for i, (fam, model) in enumerate(self.models.items()):
                model.save(os.path.join(path, f"family_{i}.tar"))

        def load(self, path: str) -> None:
            for i, (fam, model) in enumerate(self.models.items()):
                model.load(os.path.join(path, f"family_{i}.tar"))

    return FamilyCostModel


_CLASS: Any = None


def FamilyCostModel(family_of_task: Mapping[str, str], models: Mapping[str, Any]):  # noqa: N802 (a class)
    """Construct a :class:`FamilyCostModel` (the TVM-derived class is created on first use: TVM is heavy)."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _family_cost_model_class()
    return _CLASS(family_of_task, models)
