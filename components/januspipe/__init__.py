"""JanusPipe: four-phase pipeline-parallel training of conservative MLIPs, with a simulator.

Modules (import them directly; this package import stays light):

- :mod:`components.januspipe.config`     the ``januspipe`` params section (nests the mlip settings)
- :mod:`components.januspipe.schedules`  placements, action lists and the named schedules
- :mod:`components.januspipe.simulator`  discrete-event simulator over the same action lists
- :mod:`components.januspipe.stage`      ``FourPhaseStage``: the four phases of one pipeline stage
- :mod:`components.januspipe.runtime`    the torch.distributed runtime (PP x DP x GP) executing action lists
- :mod:`components.januspipe.profiler`   measured per-block, per-phase costs and activation sizes
"""
