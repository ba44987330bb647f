"""``python -m flows``: run one stage of one paper as a Prefect flow (the command dvc.yaml calls).

Examples::

    python -m flows --help                       # papers and their stages
    python -m flows har data                     # one stage (what `dvc repro har_data` runs)
    python -m flows har all --profile full       # every stage, paper-scale parameters
    python -m flows skrull simulate --set seed=3 --set simulate.global_batch=128
    python -m flows report build                 # reports/README.md from metrics/*.json
    python -m flows serve                        # serve every paper as a Prefect deployment

Parameters come from ``params.yaml`` (section = paper), validated by the component's pydantic model;
``--set KEY=VALUE`` overrides one (dotted keys, YAML values). A bad parameter exits with status 2
before anything is written. With no Prefect server configured (``PREFECT_API_URL`` unset) the flow
runs against Prefect's embedded API.
"""
from __future__ import annotations

import argparse
import importlib
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from components.base import ConfigError, InputError, deep_merge, parse_override

    if args.paper == "serve":
        from flows.serve import main as serve_main

        return serve_main(args.stage)
    if args.paper == "report":
        if args.stage not in (None, *REPORT.stages):
            return _fail(f"report stage {args.stage!r}: expected one of {list(REPORT.stages)}")
        from flows.report import report

        report()
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
    try:
        module.FLOW(config=config, stages=stages)
    except (ConfigError, InputError) as err:  # bad parameter or bad input data found by the flow
        return _fail(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
