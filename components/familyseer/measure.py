"""Builder and runner for MetaSchedule on a small CPU, identical for every tuning policy.

Two costs of stock TVM 0.27 dominate a small-budget tuning run on a 2-core machine and have nothing to
do with the search itself (measured; see the component README):

1. ``import tvm.s_tir.tensor_intrin`` parses ~4,000 lines of TVMScript intrinsics for CUDA, ROCm,
   Hexagon, ARM, ... (30 s on an idle 2-core machine, minutes on a busy one). ``TuneContext`` and the
   default build function import it although an ``llvm`` float32 workload uses none of them.
   :func:`lean_tensor_intrinsics` registers the package without running its ``__init__`` (its
   submodules stay importable on demand).
2. ``LocalBuilder`` creates a fresh process pool for *every* batch, so every batch pays a TVM import
   (plus the intrinsics import above) per worker. :class:`PersistentBuilder` keeps its
   ``max_workers`` build processes alive across batches. They are replaced after ``recycle_after``
   builds, as a guard against the memory growth that made upstream restart them, but only between
   tuning runs (:meth:`Measurer.between_runs`, before a run starts its clock), never inside a build
   call: new workers importing TVM would otherwise be timed as part of whichever run crossed the count.

A candidate that fails to build or exceeds ``timeout_sec`` comes back as a ``BuilderResult`` with an
error message: MetaSchedule records it as a failed trial (latency 1e9) and tuning goes on.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
import types
from typing import Any

_INTRIN_PKG = "tvm.s_tir.tensor_intrin"


def lean_tensor_intrinsics() -> bool:
    """Register ``tvm.s_tir.tensor_intrin`` as an empty package (submodules import on demand).

    Returns True if the stub was installed, False if the real package was already imported.
    Only valid for targets that tensorize with none of the registered intrinsics (plain ``llvm``
    float32 here); the tuning code calls it only for such targets.
    """
    if _INTRIN_PKG in sys.modules:
        return False
    import tvm.s_tir  # noqa: F401  (parent package must exist)

    spec = importlib.util.find_spec(_INTRIN_PKG)
    if spec is None or spec.submodule_search_locations is None:
        return False
    module = types.ModuleType(_INTRIN_PKG, "TVM tensor intrinsics (lazy: submodules import on demand)")
    module.__spec__ = spec
    module.__path__ = list(spec.submodule_search_locations)
    module.__file__ = spec.origin
    module.__package__ = _INTRIN_PKG
    sys.modules[_INTRIN_PKG] = module
    sys.modules["tvm.s_tir"].tensor_intrin = module  # type: ignore[attr-defined]
    return True


def target_needs_intrinsics(target: Any) -> bool:
    """True unless the target is a plain CPU ``llvm`` target (no tensorization features requested)."""
    import json

    cfg = json.loads(str(target)) if not isinstance(target, dict) else target
    if str(cfg.get("kind")) != "llvm":
        return True
    features = " ".join(str(cfg.get(k, "")) for k in ("mcpu", "mattr")).lower()
    return any(f in features for f in ("vnni", "avx512", "amx", "neon", "dotprod", "sve"))


# --------------------------------------------------------------------------------------------------
# worker side (runs in the build processes; pickled by value so the workers need not import this repo)


def _worker_init() -> None:
    lean_tensor_intrinsics()


def pool_threads() -> int:
    """The size of the calling thread's TVM kernel pool (made now if it does not exist yet)."""
    import tvm

    return int(tvm.get_global_func("runtime.NumThreads")())


def _request(threads: int) -> int:
    """``threads`` capped at the logical CPUs. TVM caps the pool there anyway, but it would still start
    the surplus threads and never join them (measured: a request of 64 on 2 CPUs leaves 64 threads per
    pool behind)."""
    return max(1, min(int(threads), os.cpu_count() or 1))


def use_kernel_threads(threads: int) -> int:
    """Size the calling thread's TVM runtime pool, the threads the generated kernels run on, to
    ``threads``; returns the pool's size.

    TVM sizes the pool from ``TVM_NUM_THREADS``, else (x86) from *half* the logical CPUs, as it assumes
    hyper-threading: one thread on a 2-vCPU machine, whatever the target's ``num-cores``
    (MetaSchedule's search ignores the variable; it sets only the kernels' threads). It caps the
    request at the logical CPUs and, where cores differ in maximum clock (hybrid P/E-core CPUs,
    favoured cores), at the fastest ones; :func:`kernel_threads` says what this machine gives. Each
    thread's pool is made once, at its first use, so this must run in the thread that runs the
    kernels, before any kernel does; a pool that already exists keeps its size, which the returned
    value shows.
    """
    os.environ["TVM_NUM_THREADS"] = str(_request(threads))
    return pool_threads()


#: run in a fresh interpreter by :func:`kernel_threads`. ``torch`` is blocked because ``tvm_ffi`` imports
#: it when it can (2-3 s of the ~5 s a TVM import takes here) and the pool needs none of it.
_PROBE = ("import sys\n"
          "sys.modules['torch'] = None\n"
          "import tvm\n"
          "print(int(tvm.get_global_func('runtime.NumThreads')()))\n")


@functools.lru_cache(maxsize=None)
def kernel_threads(threads: int) -> int:
    """The size of the kernel pool :func:`use_kernel_threads` gets on this machine for ``threads``
    (part of a tuning run's fingerprint; the :class:`Measurer` checks its runner against it).

    Asked of TVM, not predicted, because the cap at the fastest cores depends on the CPU. Asked in a
    fresh interpreter (~2 s, once per process and value): a pool made in a short-lived thread of this
    process would leave threads behind that keep spinning on a core (measured), next to the
    measurements.
    """
    env = {**os.environ, "TVM_NUM_THREADS": str(_request(threads))}
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                              timeout=300)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RuntimeError(f"could not ask TVM for its kernel pool size for {threads} thread(s): {err}") from None
    lines = proc.stdout.split()
    if proc.returncode != 0 or not lines or not lines[-1].isdigit():
        raise RuntimeError(f"could not ask TVM for its kernel pool size for {threads} thread(s) (exit status "
                           f"{proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return int(lines[-1])


def _runner_init(threads: int) -> None:
    lean_tensor_intrinsics()
    use_kernel_threads(threads)


def _worker_warmup() -> None:
    """Import what a build needs, so that the first timed build does not pay for it."""
    lean_tensor_intrinsics()
    import tvm.driver  # noqa: F401
    import tvm.s_tir.transform  # noqa: F401


def _worker_build(mod: Any, target: Any) -> str:
    """MetaSchedule's default build + export, without the tensor-intrinsics import."""
    lean_tensor_intrinsics()
    from tvm.driver import build as tvm_build
    from tvm.s_tir.meta_schedule.builder.local_builder import default_export
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return default_export(tvm_build(mod, target=target))


def make_builder(max_workers: int, timeout_sec: float, recycle_after: int = 256):
    """A MetaSchedule builder that keeps ``max_workers`` build processes alive between batches.

    :meth:`build` never replaces them; :meth:`between_runs` does, once they have done ``recycle_after``
    builds, and starts the new ones (:meth:`warm_up`), so that the cost of new workers falls between
    tuning runs, not into one run's timed builds.
    """
    import cloudpickle
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderInput, BuilderResult, PyBuilder
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    cloudpickle.register_pickle_by_value(sys.modules[__name__])

    @derived_object
    class PersistentBuilder(PyBuilder):
        def __init__(self) -> None:
            super().__init__()
            self.max_workers = max_workers
            self.timeout_sec = timeout_sec
            self.recycle_after = int(recycle_after)
            self._pool: Any = None
            self._uses = 0         # builds since the pool was started
            self.recycled = 0      # pools replaced by between_runs

        def _executor(self):
            if self._pool is None:
                self._pool = PopenPoolExecutor(max_workers=self.max_workers, timeout=self.timeout_sec,
                                               initializer=_worker_init)
                self._uses = 0
            return self._pool

        def warm_up(self) -> None:
            """Start every build process now (each imports TVM once) instead of inside the first round."""
            list(self._executor().map_with_error_catching(lambda _: _worker_warmup(), range(self.max_workers)))

        @property
        def recycle_due(self) -> bool:
            """True once the running build processes have done ``recycle_after`` builds."""
            return self._pool is not None and self._uses >= self.recycle_after

        def between_runs(self) -> bool:
            """Between two tuning runs: replace the build processes if they are due (:attr:`recycle_due`)
            and start the new ones; returns whether they were replaced."""
            if not self.recycle_due:
                return False
            self.close()
            self.warm_up()
            self.recycled += 1
            return True

        def close(self) -> None:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None

        def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
            pool = self._executor()   # never replaced here: that is between_runs' job
            self._uses += len(build_inputs)
            results: list[BuilderResult] = []
            for res in pool.map_with_error_catching(lambda x: _worker_build(*x),
                                                    [(b.mod, b.target) for b in build_inputs]):
                if res.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(res.value, None))
                elif res.status == StatusKind.TIMEOUT:
                    results.append(BuilderResult(None, f"build timed out after {self.timeout_sec} s"))
                else:
                    results.append(BuilderResult(None, f"build failed: {res.value}"))
            return results

    return PersistentBuilder()


def make_runner(timeout_sec: float, repeat: int, min_repeat_ms: int, kernel_threads: int,
                cooldown_sec: float = 0.0):
    """MetaSchedule's LocalRunner (one persistent measurement process, so measurements never overlap)
    whose kernels run on ``kernel_threads`` threads (:func:`use_kernel_threads`; the target's
    ``num-cores``, which the schedules are generated for)."""
    import cloudpickle
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, LocalRunner

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return LocalRunner(timeout_sec=timeout_sec, cooldown_sec=cooldown_sec,
                       initializer=functools.partial(_runner_init, int(kernel_threads)),
                       evaluator_config=EvaluatorConfig(number=1, repeat=repeat, min_repeat_ms=min_repeat_ms,
                                                        enable_cpu_cache_flush=False))


class Measurer:
    """The builder and runner shared by every tuning run of a stage (identical for every policy).

    Creating them starts ``builder_workers + 1`` Python processes that each import TVM; sharing them across
    runs, and starting them before the first run, keeps that start-up out of every run's tuning time.
    """

    def __init__(self, builder_workers: int, build_timeout_s: float, run_timeout_s: float, repeat: int,
                 min_repeat_ms: int, target_cores: int) -> None:
        self.key = (builder_workers, build_timeout_s, run_timeout_s, repeat, min_repeat_ms, target_cores)
        self.builder = make_builder(builder_workers, build_timeout_s)
        self.builder.warm_up()
        self.runner = make_runner(run_timeout_s, repeat, min_repeat_ms, target_cores)
        self.kernel_threads = int(self.runner.pool.submit(pool_threads).result())
        expected = kernel_threads(target_cores)
        if self.kernel_threads != expected:   # the runs' fingerprints say ``expected``: never measure otherwise
            self.close()
            raise RuntimeError(f"the tuning runner's kernel pool has {self.kernel_threads} thread(s) for "
                               f"tune.target_cores={target_cores}; expected {expected}, the pool a fresh thread "
                               f"gets on this machine (TVM_NUM_THREADS, capped by TVM)")

    @classmethod
    def from_config(cls, cfg: Any) -> "Measurer":
        return cls(cfg.builder_workers, cfg.build_timeout_s, cfg.run_timeout_s, cfg.repeat, cfg.min_repeat_ms,
                   cfg.target_cores)

    def between_runs(self) -> bool:
        """Call before a tuning run starts its clock: replaces the build processes if they have done their
        ``recycle_after`` builds (the builder never does it inside a build call, i.e. inside a run's timed
        region) and starts the new ones. Returns whether they were replaced."""
        return bool(self.builder.between_runs())

    def close(self) -> None:
        """Stop the build processes and the measurement process."""
        self.builder.close()
        self.runner.pool.shutdown()

    def __enter__(self) -> "Measurer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
