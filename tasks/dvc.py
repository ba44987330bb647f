"""DVC access for flows: the hash of a paper's data and making sure that data is present.

A flow that needs a paper's data calls :func:`ensure_stage` for the paper's data stage before it
starts work. Inside ``dvc repro`` (``$DVC_STAGE`` set) DVC has already checked the dependencies and
nothing is done. Elsewhere (a Prefect deployment on a clean worker, a plain CLI call) the stage's
outputs are compared with ``dvc.lock``; when they are missing or differ they are pulled from the DVC
remote if one is configured, otherwise reproduced with ``dvc repro <stage>``.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from components.base import InputError
from tasks.paths import repo_root

log = logging.getLogger(__name__)


class DataUnavailable(InputError, RuntimeError):
    """The data a flow needs could not be pulled or reproduced. An :class:`InputError` (the user's
    checkout lacks the data: ``python -m flows`` prints the message, exit 2, no traceback) and, as
    before, a ``RuntimeError``."""


def under_dvc() -> bool:
    """True inside a stage command run by ``dvc repro`` / ``dvc exp run``."""
    return "DVC_STAGE" in os.environ


def _dvc_exe() -> list[str]:
    exe = shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")
    return [exe] if exe else [sys.executable, "-m", "dvc"]


def lock_entry(stage: str, root: Path | None = None) -> dict[str, Any] | None:
    """The stage's entry in ``dvc.lock`` (None if it was never reproduced)."""
    lock = (root or repo_root()) / "dvc.lock"
    if not lock.is_file():
        return None
    try:
        data = yaml.safe_load(lock.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise DataUnavailable(f"{lock}: not valid YAML ({err}); expected the lock file `dvc repro` writes") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages") or {}, dict):
        raise DataUnavailable(f"{lock}: {type(data).__name__} without a 'stages' mapping; expected the lock file "
                              f"`dvc repro` writes")
    return (data.get("stages") or {}).get(stage)


def data_hash(stage: str, root: Path | None = None) -> str:
    """The md5 of the stage's outputs as recorded in ``dvc.lock`` (``unlocked`` if absent)."""
    entry = lock_entry(stage, root)
    if not entry or not entry.get("outs"):
        return "unlocked"
    return ",".join(str(o.get("md5") or o.get("hash") or "?") for o in entry["outs"])


def stage_status(stage: str, root: Path | None = None) -> dict[str, Any]:
    """``dvc status <stage>`` as a dict; empty when outputs and dependencies match ``dvc.lock``."""
    from dvc.repo import Repo

    with Repo(str(root or repo_root())) as repo:
        return repo.status(targets=[stage])


def _has_remote(root: Path) -> bool:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return bool(repo.config.get("core", {}).get("remote"))


def ensure_stage(stage: str, root: Path | None = None, allow_repro: bool = True) -> str:
    """Make the outputs of ``stage`` present and matching ``dvc.lock``; return how ("dvc",
    "up-to-date", "pulled", "reproduced")."""
    root = root or repo_root()
    if under_dvc():
        return "dvc"
    if not (root / "dvc.yaml").is_file():
        raise DataUnavailable(f"{root}: no dvc.yaml, so the outputs of stage {stage!r} cannot be checked or "
                              f"reproduced; expected a paperworks checkout (set PAPERWORKS_ROOT to one), or a run "
                              f"that includes the data stage (stage 'all')")
    if not stage_status(stage, root):
        return "up-to-date"
    if _has_remote(root):
        log.info("data stage %s is missing or stale; pulling it from the DVC remote", stage)
        res = subprocess.run([*_dvc_exe(), "pull", stage], cwd=root, capture_output=True, text=True)
        if res.returncode == 0 and not stage_status(stage, root):
            return "pulled"
        log.warning("dvc pull %s did not restore it (%s); reproducing instead", stage, res.stderr.strip()[-500:])
    if not allow_repro:
        raise DataUnavailable(f"stage {stage!r}: its outputs are missing or stale and reproducing it is not "
                              f"allowed; expected them present (`dvc pull {stage}` or `dvc repro {stage}`)")
    log.info("data stage %s is missing or stale; reproducing it with dvc repro", stage)
    res = subprocess.run([*_dvc_exe(), "repro", "--single-item", stage], cwd=root, text=True,
                         stdout=sys.stdout, stderr=sys.stderr)
    if res.returncode != 0:
        raise DataUnavailable(f"dvc repro {stage} failed with exit code {res.returncode} (dvc's output above says "
                              f"why); expected the data stage to reproduce, or run `dvc repro {stage}` yourself")
    return "reproduced"
