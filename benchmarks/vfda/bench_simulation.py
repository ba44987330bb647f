"""Flower simulation start-up cost: K federations in ONE ``run_simulation`` (what the vfda flow does,
with 1 or 2 lanes) against K separate simulations (one Ray start-up each). Same federations, same
tiny data, measured back to back on this machine. Writes ``benchmarks/results/vfda_simulation.json``.

    .venv/bin/python benchmarks/vfda/bench_simulation.py [--federations 4] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks._cli import output_file, positive_int  # noqa: E402

TINY_DATA = {
    "field_of_view_mm": 16.0, "spatial_size": 16, "test_fraction": 0.34,
    "institutes": [
        {"name": "A", "num_volumes": 4, "grid": 16, "lesion_radius_mm": [2.0, 4.0]},
        {"name": "B", "num_volumes": 4, "grid": 20, "gamma": 0.6, "contrast": 1.5, "lesion_radius_mm": [2.0, 4.0]},
        {"name": "C", "num_volumes": 4, "grid": 12, "gamma": 1.4, "lesion_radius_mm": [2.0, 4.0]},
        {"name": "E", "num_volumes": 2, "grid": 16, "held_out": True, "gamma": 1.6, "lesion_radius_mm": [2.0, 4.0]},
    ]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--federations", type=positive_int, default=4)
    p.add_argument("--rounds", type=positive_int, default=3)
    p.add_argument("--out", type=output_file, default=ROOT / "benchmarks" / "results" / "vfda_simulation.json")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from pydantic import ValidationError

    from components.base import format_validation_error
    from components.vfda.config import VfdaConfig

    def config(lanes: int) -> VfdaConfig:
        return VfdaConfig.model_validate({
            "data": TINY_DATA, "model": {"channels": [4, 8, 16]},
            "federation": {"strategies": ["fedavg"], "variants": ["base", "vfda"],
                           "seeds": list(range((args.federations + 1) // 2)), "ablation_strategies": [],
                           "num_rounds": args.rounds, "local_steps": 2},
            "simulation": {"lanes": lanes}})

    try:  # e.g. --rounds above federation.num_rounds' bound: named before anything runs
        config(2)
    except ValidationError as err:
        p.error(f"--federations {args.federations} / --rounds {args.rounds}: "
                + format_validation_error("vfda", err))

    import logging

    logging.getLogger("flwr").setLevel(logging.WARNING)
    from components.io import atomic_file
    from components.vfda.data import generate_dataset
    from components.vfda.federation import RunSettings, plan
    from components.vfda.simulation import simulate

    results: dict = {"machine": platform.platform(), "cpus": os.cpu_count(), "federations": args.federations,
                     "rounds": args.rounds, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate_dataset(config(1).data, tmp / "data", seed=0)
        for name, lanes, separate in (("one_simulation_1_lane", 1, False), ("one_simulation_2_lanes", 2, False),
                                      ("separate_simulations", 1, True)):
            cfg = config(lanes)
            feds = plan(cfg)[: args.federations]
            t0, c0 = time.perf_counter(), time.process_time()
            groups = [[f] for f in feds] if separate else [feds]
            client_cpu = 0.0
            for i, group in enumerate(groups):
                summary = simulate(RunSettings(cfg, tmp / "data", tmp / f"{name}-{i}", tuple(group)))
                client_cpu += summary["client_cpu_s"]
            wall = time.perf_counter() - t0
            results["runs"][name] = {"wall_s": wall, "driver_cpu_s": time.process_time() - c0,
                                     "client_cpu_s": client_cpu, "simulations": len(groups)}
            print(f"{name}: {wall:.1f} s wall for {len(feds)} federations in {len(groups)} simulation(s)", flush=True)
    r = results["runs"]
    results["speedup_one_vs_separate"] = r["separate_simulations"]["wall_s"] / r["one_simulation_1_lane"]["wall_s"]
    results["speedup_2_lanes_vs_1"] = r["one_simulation_1_lane"]["wall_s"] / r["one_simulation_2_lanes"]["wall_s"]
    with atomic_file(args.out) as fh:
        fh.write(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k.startswith("speedup")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
