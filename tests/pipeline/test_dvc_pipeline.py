"""The DVC pipeline is valid: the DAG builds, every stage's params resolve in params.yaml, every
paper's stages are wired through the CLI, metrics/plots are declared, and the report depends on
every paper's metrics and claims."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from flows import PAPERS

REPO = Path(__file__).resolve().parents[2]
DVC = [str(Path(sys.executable).parent / "dvc")]


def _load(name: str):
    return yaml.safe_load((REPO / name).read_text())


def _dvc_project_copy(dest: Path) -> Path:
    """What ``dvc dag`` reads of this checkout (dvc.yaml, dvc.lock, params.yaml, .dvcignore, the DVC
    config) copied to ``dest``, with ``core.no_scm`` (``dest`` is no Git repository).

    DVC (3.x) opening a repository makes ``.dvc/tmp`` and takes ``.dvc/tmp/lock`` there, with no
    setting or variable to move it (``Repo.tmp_dir`` is ``<dvc_dir>/tmp``), so run in the checkout it
    would write into it. The DAG comes from the stage files alone: none of the stages' deps or outs
    need exist."""
    from configobj import ConfigObj

    (dest / ".dvc").mkdir(parents=True)
    for name in ("dvc.yaml", "dvc.lock", "params.yaml", ".dvcignore"):
        if (REPO / name).is_file():
            shutil.copy(REPO / name, dest / name)
    config = ConfigObj(str(REPO / ".dvc" / "config"))
    config.filename = str(dest / ".dvc" / "config")
    config.setdefault("core", {})["no_scm"] = "true"
    config.write()
    return dest


def test_dvc_dag_builds(tmp_path):
    """``dvc dag`` builds the pipeline's DAG, run on a copy of the stage files so that the checkout
    is left untouched (no ``.dvc/tmp``, no lock, no site cache written)."""
    project = _dvc_project_copy(tmp_path / "project")
    env = {**os.environ, "DVC_SITE_CACHE_DIR": str(tmp_path / "site-cache"), "DVC_NO_ANALYTICS": "1"}
    out = subprocess.run([*DVC, "dag", "--dot"], cwd=project, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    for paper in PAPERS:
        assert f"{paper}_data" in out.stdout


def _lookup(params, dotted):
    cur = params
    for part in dotted.split("."):
        assert isinstance(cur, dict) and part in cur, f"param {dotted!r} not in params.yaml"
        cur = cur[part]


def test_stage_params_resolve():
    params = _load("params.yaml")
    for name, stage in _load("dvc.yaml")["stages"].items():
        for entry in stage.get("params", []):
            keys = entry if isinstance(entry, str) else None
            if keys is None:  # {file: [keys]}
                for file, ks in entry.items():
                    other = _load(file)
                    for k in ks:
                        _lookup(other, k)
                continue
            _lookup(params, keys)


def test_every_paper_stage_is_a_dvc_stage_running_the_cli():
    stages = _load("dvc.yaml")["stages"]
    for paper, entry in PAPERS.items():
        for stage in entry.stages:
            name = f"{paper}_{stage}"
            assert name in stages, f"dvc.yaml has no stage {name}"
            assert stages[name]["cmd"] == f"python -m flows {paper} {stage}"
            assert any(str(p).startswith(paper) for p in stages[name].get("params", [])), f"{name} declares no params"
        last = stages[f"{paper}_{entry.stages[-1]}"]
        metrics = [m if isinstance(m, str) else next(iter(m)) for m in last.get("metrics", [])]
        assert f"metrics/{paper}.json" in metrics
        plots = [p if isinstance(p, str) else next(iter(p)) for p in last.get("plots", [])]
        assert any(p.startswith(f"plots/{paper}") for p in plots)


def test_report_depends_on_every_paper():
    report = _load("dvc.yaml")["stages"]["report"]
    deps = set(report["deps"])
    for paper in PAPERS:
        assert f"metrics/{paper}.json" in deps and f"components/{paper}/claims.yaml" in deps


def test_component_deps_are_the_code_not_the_docs():
    """Stages depend on a component's code file by file: editing its README (or claims.yaml, which
    only the report reads) must not invalidate the paper's results."""
    for name, stage in _load("dvc.yaml")["stages"].items():
        deps = [str(d) for d in stage.get("deps", [])]
        for dep in deps:
            path = REPO / dep
            if dep.startswith(("components/", "flows/", "tasks/")):  # code: in every clone (data is not)
                assert path.exists(), f"{name}: dependency {dep} does not exist"
            if dep.startswith("components/") and name != "report":
                assert path.is_file(), f"{name}: {dep} is a directory (its README would invalidate the stage)"
                assert path.suffix != ".md" and path.name != "claims.yaml", f"{name}: depends on docs {dep}"


def test_every_paper_stage_depends_on_the_profile():
    """``dvc exp run -S <paper>.profile=full`` must re-run every stage of the paper: a stage that
    declared only some sections would keep its quick-profile outputs under a full-profile run."""
    stages = _load("dvc.yaml")["stages"]
    for paper, entry in PAPERS.items():
        assert (REPO / "components" / paper / "profiles" / "full.yaml").is_file()
        for stage in entry.stages:
            params = stages[f"{paper}_{stage}"].get("params", [])
            assert paper in params or f"{paper}.profile" in params, \
                f"{paper}_{stage} does not depend on {paper}.profile (params: {params})"


def _status_of_tracked_files(project: Path, tmp_path: Path) -> dict:
    """``dvc status --json`` of ``project`` (a :func:`_dvc_project_copy`) after copying into it every
    Git-tracked file that a stage depends on or writes (code, params, committed metrics, plots and
    reports); the cached outputs (data, models, results) stay out of the copy."""
    import json

    stages = _load("dvc.yaml")["stages"]
    paths = {p if isinstance(p, str) else next(iter(p)) for stage in stages.values()
             for key in ("deps", "outs", "metrics", "plots") for p in stage.get(key, [])}
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split("\0")
    for name in tracked:
        if any(name == p or name.startswith(p + "/") for p in paths):
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / name, project / name)
    env = {**os.environ, "DVC_SITE_CACHE_DIR": str(tmp_path / "site-cache"), "DVC_NO_ANALYTICS": "1"}
    out = subprocess.run([*DVC, "status", "--json"], cwd=project, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _changed_tracked(status: dict) -> list[str]:
    """What ``dvc status`` reports besides outputs missing from the copy (``deleted``, ``not in cache``)."""
    changed = []
    for stage, entries in status.items():
        for entry in entries:
            for kind, changes in (entry.items() if isinstance(entry, dict) else [("", {entry: ""})]):
                for path, state in changes.items():
                    if state not in ("deleted", "not in cache"):
                        changed.append(f"{stage}: {kind} {path} {state}")
    return changed


def test_the_lock_records_the_code_params_and_committed_results_of_this_checkout(tmp_path):
    """``dvc.lock`` matches the checkout: every stage's code and params are the ones its committed results
    were made with, and the committed metrics, plots and reports are the ones the lock records. A code
    change committed without re-running (or, when it cannot change any output, ``dvc commit``-ing) the
    stages that depend on it fails here: wherever the committed outputs are present, ``dvc status``
    would not be clean and ``dvc repro`` would re-run those stages."""
    status = _status_of_tracked_files(_dvc_project_copy(tmp_path / "project"), tmp_path)
    changed = _changed_tracked(status)
    assert changed == [], ("dvc.lock does not match the checkout (docs/adding-a-paper.md, 'DVC stages': re-run "
                           "the stages, or dvc commit -f them when no output can change):\n" + "\n".join(changed))


def test_the_lock_check_sees_a_changed_code_file_and_param(tmp_path):
    project = _dvc_project_copy(tmp_path / "project")
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    (dep,) = [d for d in lock["stages"]["report"]["deps"] if d["path"] == "flows/report.py"]
    dep["md5"] = "0" * 32                                           # as if flows/report.py had changed
    lock["stages"]["har_data"]["params"]["params.yaml"]["har.seed"] = 12345
    (project / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    changed = "\n".join(_changed_tracked(_status_of_tracked_files(project, tmp_path)))
    assert "report: changed deps flows/report.py modified" in changed
    assert "har_data" in changed and "har.seed" in changed
