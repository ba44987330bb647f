"""A MatRIS-style invariant machine-learning interatomic potential (MLIP), reusable by several papers.

Modules (import them directly; this package import stays light):

- :mod:`components.mlip.config`  pydantic models of the data, model and training parameters
- :mod:`components.mlip.data`    ASE/EMT molecular-dynamics data set, extxyz I/O, loader for any ASE-readable file
- :mod:`components.mlip.graph`   atom graph, three-body line graph, batching and graph-parallel partitions
- :mod:`components.mlip.basis`   Bessel radial basis, polynomial envelope, Legendre angular basis
- :mod:`components.mlip.model`   the model (separable attention, gated MLPs) split into pipeline-ready parts
- :mod:`components.mlip.train`   conservative losses, the reference single-process trainer, evaluation, baselines
"""
