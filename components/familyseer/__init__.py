"""FamilySeer: subgraph-family auto-tuning on TVM MetaSchedule (Zhang et al., arXiv:2201.00194).

Modules (TVM, torch and xgboost are imported inside functions, so importing this package is cheap):

- :mod:`.config`      the ``familyseer`` section of params.yaml (pydantic)
- :mod:`.zoo`         PyTorch models -> fused Relax modules -> MetaSchedule tasks with family keys
- :mod:`.family`      family grouping policies (op / hash / ind)
- :mod:`.cost_model`  ``FamilyCostModel``: one XGBoost model per family
- :mod:`.scheduler`   ``FamilySeerScheduler`` (gradient + foresee), ``TrialLedger`` (shared budget accounting)
- :mod:`.measure`     builder/runner for small CPUs
- :mod:`.tuning`      one run = model x policy x seed, with replay of stored runs
- :mod:`.latency`     compile with the tuned database, end-to-end latency (Relax VM, PyTorch eager)
- :mod:`.analysis`    search-time speed-up, cost-model ranking quality
"""
