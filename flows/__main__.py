"""``python -m flows``: run one stage of one paper as a Prefect flow (the command dvc.yaml calls).

Examples::

    python -m flows --help                       # papers and their stages
    python -m flows har data                     # one stage (what `dvc repro har_data` runs)
    python -m flows har all --profile full       # every stage, paper-scale parameters
    python -m flows skrull simulate --set seed=3 --set paper_sim.num_batches=20
    python -m flows report build                 # reports/README.md from metrics/*.json
    python -m flows serve                        # serve every paper as a Prefect deployment

Parameters come from ``params.yaml`` (section = paper), validated by the component's pydantic model;
``--set KEY=VALUE`` overrides one (dotted keys, YAML values). A bad parameter exits with status 2
before anything is written. With no Prefect server configured (``PREFECT_API_URL`` unset) the flow
runs against Prefect's embedded API.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import sys
from typing import Any

from flows import PAPERS, REPORT


def _epilog() -> str:
    lines = ["papers and stages:"]
    for name, entry in PAPERS.items():
        lines.append(f"  {name:<11} {' '.join(entry.stages)}  | all")
        lines.append(f"  {'':<11} {entry.title}")
    lines.append(f"  {'report':<11} {' '.join(REPORT.stages)}")
    lines.append(f"  {'serve':<11} serve every paper as a Prefect deployment (see infra/prefect/)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flows", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a paper's pipeline stage as a Prefect flow (MLflow-tracked, DVC outputs).",
        epilog=_epilog())
    p.add_argument("paper", help="paper key, 'report' or 'serve'")
    p.add_argument("stage", nargs="?", default=None, help="stage name or 'all'")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--profile", choices=["quick", "full"], default=None,
                   help="parameter profile (default: the params.yaml value, normally quick)")
    p.add_argument("--params", default=None, help="params file (default: params.yaml in the checkout)")
    return p


def _fail(msg: str, code: int = 2) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return code


#: Prefect's loggers of flow and task runs (their "task run failed" / "flow run failed" records carry the
#: exception's traceback)
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class UserErrorTracebackFilter(logging.Filter):
    """Drops the traceback from a log record whose exception is a user error (:class:`ConfigError`,
    :class:`InputError`): the record's message still names the error, and :func:`main` prints it as one
    ``error: ...`` line; a traceback through Prefect's engine would only bury it. Records of any other
    exception (a real crash) keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from components.base import ConfigError, InputError

        exc = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
        if isinstance(exc, (ConfigError, InputError)):
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_user_error_tracebacks() -> None:
    """Install :class:`UserErrorTracebackFilter` on Prefect's run loggers (once)."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, UserErrorTracebackFilter) for f in logger.filters):
            logger.addFilter(UserErrorTracebackFilter())


def _no_parameters(args: argparse.Namespace, what: str) -> str | None:
    """The problem when parameter options were given to a command that takes none (report, serve)."""
    given = [f"--set {o}" for o in args.overrides]
    given += [f"--profile {args.profile}"] if args.profile else []
    given += [f"--params {args.params}"] if args.params else []
    if not given:
        return None
    return (f"{args.paper} takes no parameters (got {' '.join(given)}); expected `python -m flows {args.paper}` "
            f"alone: {what}")


#: whether the command line paused Python's cyclic garbage collector for start-up (see :func:`_run`)
_GC_PAUSED = False


def _startup_done() -> None:
    """End of start-up under :func:`_run`: the objects that exist now (imported modules, the config)
    move to the collector's permanent generation, and collection resumes for the run itself. Nothing
    when the collector was not paused (``main`` called in-process, e.g. by the tests)."""
    global _GC_PAUSED
    if _GC_PAUSED:
        gc.freeze()
        gc.enable()
        _GC_PAUSED = False


def _run() -> int:
    """``python -m flows``: :func:`main` with less interpreter overhead per command, which every DVC stage
    pays once: 3.3 s less of a stage's ~14 s of start-up and exit on the 2-core VM (median of 4 alternated
    runs of ``har data``; ``benchmarks/stage_overhead.py`` -> ``benchmarks/results/stage_overhead.json``).

    - The cyclic garbage collector is paused while the CLI imports Prefect, MLflow, torch and the
      component (close to a million objects that live until exit, which the collector's oldest
      generation would otherwise scan again and again), and resumed, with those objects frozen, before
      the flow runs (:func:`_startup_done`).
    - At exit, everything still alive is frozen too: the interpreter's final collections then skip
      those objects instead of walking the whole module graph (about 2 s on the VM). Files, runs and
      servers are closed before that: by context managers, and by ``atexit`` handlers, which run
      before the final collections.
    """
    global _GC_PAUSED
    gc.disable()
    _GC_PAUSED = True
    try:
        return main()
    finally:
        gc.freeze()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from components.base import ConfigError, InputError, deep_merge, parse_override

    if args.paper == "serve":
        problem = _no_parameters(args, "edit infra/prefect/deployments.yaml to choose papers, profiles and "
                                       "parameters")
        if problem:
            return _fail(problem)
        from flows.serve import main as serve_main

        _startup_done()
        try:
            return serve_main(args.stage)
        except ConfigError as err:  # a bad infra/prefect/deployments.yaml
            return _fail(str(err))
    if args.paper == "report":
        if args.stage not in (None, *REPORT.stages):
            return _fail(f"report stage {args.stage!r}: expected one of {list(REPORT.stages)}")
        problem = _no_parameters(args, "the report reads every paper's metrics/<paper>.json and claims.yaml")
        if problem:
            return _fail(problem)
        from flows.report import report

        _startup_done()
        quiet_user_error_tracebacks()
        try:
            report()
        except (ConfigError, InputError) as err:  # a missing or malformed metrics/claims file
            return _fail(str(err))
        return 0
    if args.paper not in PAPERS:
        return _fail(f"paper {args.paper!r}: expected one of {sorted(PAPERS)} (or report, serve)")
    entry = PAPERS[args.paper]
    if args.stage is None:
        return _fail(f"{args.paper}: missing stage; expected one of {list(entry.stages)} or 'all'")
    if args.stage != "all" and args.stage not in entry.stages:
        return _fail(f"{args.paper} stage {args.stage!r}: expected one of {list(entry.stages)} or 'all'")

    module = importlib.import_module(entry.module)
    from pathlib import Path

    from tasks.params import load_config

    overrides: dict[str, Any] = {}
    try:
        for item in args.overrides:
            overrides = deep_merge(overrides, parse_override(item))
        if args.profile:
            overrides["profile"] = args.profile
        config = load_config(module.CONFIG, overrides, Path(args.params) if args.params else None)
    except ConfigError as err:
        return _fail(str(err))

    stages = list(entry.stages) if args.stage == "all" else [args.stage]
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    quiet_user_error_tracebacks()
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        # no server configured: the flow will start Prefect's temporary server, whose module Prefect
        # imports then; import it here, still in start-up (only when the module is imported changes;
        # a Prefect that keeps it elsewhere imports its own module later, as before)
        try:
            importlib.import_module("prefect.server.api.server")
        except ImportError:
            pass
    _startup_done()
    try:
        module.FLOW(config=config, stages=stages)
    except (ConfigError, InputError) as err:  # bad parameter or bad input data found by the flow (incl.
        return _fail(str(err))                # missing DVC data, a launch past its timeout_s)
    return 0


if __name__ == "__main__":
    sys.exit(_run())
