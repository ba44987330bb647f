"""MLflow record of every flow run.

Layout of the record (see ARCHITECTURE.md):

- one **experiment per paper** (named after the paper key, e.g. ``har``) whose description
  (``mlflow.note.content``) is markdown: the paper, its claims, how to reproduce;
- one **parent run per flow run**, tagged with the git commit, the DVC hash of the paper's data and
  the Prefect flow-run id, holding the flattened config as params;
- **nested runs per variant / seed** (``run.child("imfe", seed=0)``);
- headline figures and tables as artifacts.

Runs are driven through :class:`mlflow.MlflowClient` with explicit run ids rather than MLflow's
thread-local "active run", so logging from Prefect tasks on worker threads lands on the right run.

By default the store is embedded: SQLite at ``mlflow/mlflow.db`` and artifacts under
``mlflow/artifacts/`` in the checkout. ``MLFLOW_TRACKING_URI`` points it at a tracking server.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from tasks.paths import repo_root

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

#: metric names shared across papers (ARCHITECTURE.md); flows use these where they apply
SHARED_METRICS = (
    "throughput_*_per_s", "latency_ms_p50", "latency_ms_p99", "dice", "psnr_db", "ssim",
    "flops_per_s", "speedup_vs_<baseline>", "accuracy",
)


def tracking_uri(root: Path | None = None) -> str:
    """``$MLFLOW_TRACKING_URI`` or the embedded SQLite store of the checkout."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    root = root or repo_root()
    (root / "mlflow").mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"


def _sqlite_db(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` store, else None (a server decides its artifacts)."""
    return Path(uri[len("sqlite:///"):]).resolve() if uri.startswith("sqlite:///") else None


def artifact_location(uri: str, paper: str) -> str | None:
    """Where a new experiment keeps artifacts: ``artifacts/<paper>`` beside a local SQLite store
    (``mlflow/artifacts/<paper>`` in the checkout by default), else None (the server decides)."""
    db = _sqlite_db(uri)
    return f"{db.parent.joinpath('artifacts').as_uri()}/{paper}" if db else None


def relocate_copied_store(db: Path, experiment_id: str, old: str, new: str) -> int:
    """Point an experiment of a local SQLite store, and its runs, at ``new`` instead of ``old``.

    MLflow stores every experiment's artifact location (and every run's artifact URI) as an absolute
    path when it is created, and offers no API to change it. A store copied or moved with its
    checkout would keep writing artifacts into the original checkout's ``mlflow/artifacts/``. The
    three columns rewritten here (``experiments.artifact_location``, ``runs.artifact_uri``,
    ``logged_models.artifact_location``) have kept their names and meaning across MLflow 2.x and 3.x;
    only locations that start with ``old`` are touched. Returns the number of runs relocated.
    """
    import sqlite3

    eid = int(experiment_id)
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as con, con:
        con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (new, eid))
        moved = con.execute(
            "UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
            "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
            (new, len(old) + 1, eid, len(old), old)).rowcount
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "logged_models" in tables:
            con.execute(
                "UPDATE logged_models SET artifact_location = ? || substr(artifact_location, ?) "
                "WHERE experiment_id = ? AND substr(artifact_location, 1, ?) = ?",
                (new, len(old) + 1, eid, len(old), old))
    return moved


def git_commit(root: Path | None = None) -> str:
    root = root or repo_root()
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def prefect_flow_run_id() -> str:
    try:
        from prefect.runtime import flow_run

        return str(flow_run.id or "none")
    except Exception:  # prefect missing or no flow context: the record says so
        return "none"


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def flatten(mapping: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _flatten("", mapping, out)
    return out


class Run:
    """One MLflow run addressed by id (thread-safe, no fluent global state)."""

    def __init__(self, client: "MlflowClient", run_id: str, experiment_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id

    # -- values -------------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten(params)
        items = [Param(k, str(v)[:6000]) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log every finite number in ``metrics`` (nested dicts become dotted names)."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = []
        for k, v in flatten(metrics).items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            items.append(Metric(k, float(v), ts, step or 0))
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i:i + 500])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    # -- artifacts ----------------------------------------------------------------------------
    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, obj, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_table(self, rows: Sequence[Mapping[str, Any]], name: str) -> None:
        """A table as ``<name>.csv`` and ``<name>.md`` artifacts (the markdown renders in the UI)."""
        if not rows:
            return
        self.log_text(rows_to_csv(rows), f"tables/{name}.csv")
        self.log_text(rows_to_markdown(rows), f"tables/{name}.md")

    # -- structure ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def child(self, name: str, params: Mapping[str, Any] | None = None,
              tags: Mapping[str, Any] | None = None) -> Iterator["Run"]:
        """A nested run (variant, seed, client, ...) under this one."""
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

        parent_tags = self.client.get_run(self.run_id).data.tags
        inherited = {k: v for k, v in parent_tags.items() if k.startswith(("git_", "dvc_", "prefect_", "paper", "profile"))}
        all_tags = {**inherited, **{k: str(v) for k, v in (tags or {}).items()},
                    MLFLOW_PARENT_RUN_ID: self.run_id, MLFLOW_RUN_NAME: name}
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        child = Run(self.client, run.info.run_id, self.experiment_id)
        if params:
            child.log_params(params)
        status = "FAILED"
        try:
            yield child
            status = "FINISHED"
        finally:
            self.client.set_terminated(child.run_id, status=status)


def rows_to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    import csv

    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def rows_to_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


class Tracker:
    """Opens the per-paper experiment and the parent run of one flow run."""

    def __init__(self, paper: str, root: Path | None = None, uri: str | None = None) -> None:
        import mlflow

        self.paper = paper
        self.root = root or repo_root()
        self.uri = uri or tracking_uri(self.root)
        self.client = mlflow.MlflowClient(tracking_uri=self.uri)

    def experiment_id(self, description: str | None = None) -> str:
        exp = self.client.get_experiment_by_name(self.paper)
        if exp is None:
            exp_id = self.client.create_experiment(
                self.paper, artifact_location=artifact_location(self.uri, self.paper))
        else:
            exp_id = exp.experiment_id
            if exp.lifecycle_stage == "deleted":
                # deleted in the MLflow UI: MLflow refuses new runs in it (and its name stays taken), so
                # every later run of the paper would fail; bring it back, with its old runs, and say so
                self.client.restore_experiment(exp_id)
                log.warning("MLflow experiment %r (id %s) was deleted; restored it to record this run (delete it "
                            "for good with `mlflow gc` to start afresh)", self.paper, exp_id)
            self._keep_artifacts_beside_store(exp)
        if description:
            self.client.set_experiment_tag(exp_id, "mlflow.note.content", description)
        return exp_id

    def _keep_artifacts_beside_store(self, exp: Any) -> None:
        """A local store's experiment keeps its artifacts beside the store, also in a copied checkout.

        Our experiments are created with ``<store folder>/artifacts/<paper>``. If the location names
        another folder of that shape, the store was copied or moved from another checkout (a scratch
        copy that carried ``mlflow/``): relocate the experiment and its runs to this store's folder,
        and say so. A location of any other shape was chosen by someone else and is left alone.
        """
        db, want = _sqlite_db(self.uri), artifact_location(self.uri, self.paper)
        if db is None or want is None:
            return
        old = (exp.artifact_location or "").rstrip("/")
        if old == want or not old.startswith("file:") or not old.endswith(f"/artifacts/{self.paper}"):
            return
        moved = relocate_copied_store(db, exp.experiment_id, old, want)
        print(f"[tracking] MLflow experiment {self.paper!r} kept its artifacts in {old}, outside this "
              f"store ({db}): a store copied or moved from another checkout. Relocated it and "
              f"{moved} run(s) to {want}.", flush=True)

    @contextlib.contextmanager
    def parent_run(self, run_name: str, config: Any = None, tags: Mapping[str, Any] | None = None,
                   description: str | None = None) -> Iterator[Run]:
        """The run of one flow run; FAILED if the body raises."""
        from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_RUN_NAME

        exp_id = self.experiment_id(description)
        commit = git_commit(self.root)
        all_tags = {"paper": self.paper, "git_commit": commit, MLFLOW_GIT_COMMIT: commit,
                    "prefect_flow_run_id": prefect_flow_run_id(), MLFLOW_RUN_NAME: run_name}
        all_tags.update({k: str(v) for k, v in (tags or {}).items()})
        run = self.client.create_run(exp_id, tags=all_tags, run_name=run_name)
        parent = Run(self.client, run.info.run_id, exp_id)
        if config is not None:
            params = config.model_dump(mode="json") if hasattr(config, "model_dump") else dict(config)
            parent.log_params(params)
            with tempfile.TemporaryDirectory() as tmp:
                import yaml

                p = Path(tmp) / "config.yaml"
                p.write_text(yaml.safe_dump(params, sort_keys=False))
                parent.log_artifact(p)
        status = "FAILED"
        try:
            yield parent
            status = "FINISHED"
        finally:
            self.client.set_terminated(parent.run_id, status=status)
