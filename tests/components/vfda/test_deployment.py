"""The same Flower App on Flower's deployment runtime: a SuperLink and two SuperNodes as separate
processes on loopback, the run submitted with ``flwr run components/vfda``; a client crashes in
round 1 and the federation still completes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tasks.launch import free_port

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent

CONFIG = {
    "data": {
        "field_of_view_mm": 16.0, "spatial_size": 16, "test_fraction": 0.34,
        "institutes": [
            {"name": "A", "num_volumes": 3, "grid": 16, "lesion_radius_mm": [2.0, 4.0]},
            {"name": "B", "num_volumes": 3, "grid": 20, "gamma": 0.6, "contrast": 1.5, "lesion_radius_mm": [2.0, 4.0]},
            {"name": "E", "num_volumes": 2, "grid": 12, "held_out": True, "gamma": 1.6, "lesion_radius_mm": [2.0, 4.0]},
        ]},
    "model": {"channels": [4, 8, 16]},
    "federation": {"strategies": ["fedavg"], "variants": ["vfda"], "seeds": [0], "ablation_strategies": [],
                   "num_rounds": 1, "local_steps": 2, "min_train_clients": 1},
    "simulation": {"lanes": 1, "fault_round": 1, "fault_partition": 1},
}


def _healthy(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
        return True
    except OSError:
        return False


def _stop(procs: list[subprocess.Popen]) -> None:
    """Stop the processes this test started and everything they spawned (by pid)."""
    import psutil

    family = []
    for p in procs:
        try:
            family += [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for proc in family:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=10)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_flwr_run_on_superlink_and_supernodes(tmp_path):
    from components.vfda.config import VfdaConfig
    from components.vfda.data import generate_dataset

    cfg = VfdaConfig.model_validate(CONFIG)
    data_dir = tmp_path / "data"
    generate_dataset(cfg.data, data_dir, seed=0)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"vfda": CONFIG}))
    out_dir = tmp_path / "out"
    home = tmp_path / "flwr-home"
    home.mkdir()
    link_port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n')
    env = {**os.environ, "FLWR_HOME": str(home), "PYTHONPATH": str(REPO), "FLWR_DISABLE_UPDATE_CHECK": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        log = open(tmp_path / "superlink.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen(
            [str(BIN / "flower-superlink"), "--insecure", "--port", str(link_port), "--database", ":flwr-in-memory:",
             "--disable-runtime-dependency-installation"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 90
        while not _healthy(link_port):
            assert time.monotonic() < deadline and procs[0].poll() is None, (tmp_path / "superlink.log").read_text()
            time.sleep(0.5)
        for pid in range(2):
            log = open(tmp_path / f"supernode{pid}.log", "w")
            logs.append(log)
            procs.append(subprocess.Popen(
                [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link_port}",
                 "--port", str(free_port()), "--node-config", f"partition-id={pid} num-partitions=2"],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
        run = subprocess.run(
            [str(BIN / "flwr"), "run", "components/vfda", "loopback", "--stream", "--run-config",
             f"params-file='{params}' data-dir='{data_dir}' out-dir='{out_dir}'"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=360)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        summary = json.loads((out_dir / "run.json").read_text())
        assert sorted(summary["lanes"][0]) == ["A", "B"]
        hist = json.loads((out_dir / "federations" / "fedavg-vfda-s0" / "history.json").read_text())
        (r1,) = hist["rounds"]
        assert len(r1["failures"]) == 1 and "on purpose" in r1["failures"][0]["reason"]   # B crashed ...
        assert r1["aggregated"] and set(r1["train"]) == {"A"}                             # ... A carried on
        assert set(r1["evaluate"]) == {"A", "B"} and set(r1["heldout"]) == {"E"}
        assert (out_dir / "federations" / "fedavg-vfda-s0" / "global.pt").is_file()
    finally:
        _stop(procs)
        for log in logs:
            log.close()
