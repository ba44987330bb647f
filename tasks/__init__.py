"""Prefect-side building blocks shared by every paper's flow.

``tasks`` may import prefect, mlflow and dvc (lazily where they are slow to import); components
never do. Modules:

- :mod:`tasks.paths`     repository layout (``data/<paper>``, ``models/<paper>``, ``metrics/<paper>.json``, ``plots/<paper>``)
- :mod:`tasks.io`        atomic writes (temporary path, then rename)
- :mod:`tasks.params`    ``params.yaml`` loading and validation through the component's config model
- :mod:`tasks.tracking`  MLflow: one experiment per paper, parent run per flow run, nested runs per variant
- :mod:`tasks.dvc`       DVC access: data-stage hashes, making sure a paper's data is present
- :mod:`tasks.pipeline`  the driver every paper flow uses to run its stages
- :mod:`tasks.launch`    torchrun-style multi-process launch (gloo on CPU)
- :mod:`tasks.report`    the cross-paper results report
"""
