"""Imports point one way (flows -> tasks -> components): a component imports neither the
orchestration/tracking tools nor ``tasks/`` or ``flows/`` (checked statically, function-level imports
included, so a lazy import cannot slip through)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from components.io import atomic_dir, atomic_file

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("prefect", "mlflow", "dvc", "tasks", "flows")
#: the one documented exception: the torchrun-style launcher of tasks/ (ARCHITECTURE: "distributed
#: launch" is a tasks/ service), which the JanusPipe runtime and profiler start their ranks with
ALLOWED = {("components/januspipe/runtime.py", "tasks.launch"), ("components/januspipe/profiler.py", "tasks.launch")}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_components_import_no_tasks_flows_or_orchestration_tools():
    bad = []
    for path in sorted((ROOT / "components").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for name in _imports(path):
            if name.split(".")[0] in FORBIDDEN and (rel, name) not in ALLOWED:
                bad.append(f"{rel}: import {name}")
    assert not bad, "components must not import these (flows -> tasks -> components):\n" + "\n".join(bad)


def test_the_checker_sees_function_level_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from tasks.io import atomic_file\n    import mlflow\n")
    assert _imports(src) == ["tasks.io", "mlflow"]


def test_tasks_io_reexports_the_component_primitives():
    from tasks import io

    assert io.atomic_dir is atomic_dir and io.atomic_file is atomic_file


def test_atomic_dir_keeps_the_old_folder_when_the_block_fails(tmp_path):
    out = tmp_path / "run"
    with atomic_dir(out) as tmp:
        (tmp / "a.json").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "a.json").write_text("2")
            raise RuntimeError("killed mid-run")
    assert (out / "a.json").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary sibling left behind
