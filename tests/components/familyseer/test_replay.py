"""A stored tuning run is replayed only on the machine and library versions it was measured with, and
the compile and evaluate stages use only runs whose fingerprint is the current configuration's."""
from __future__ import annotations

import os

import pytest

from components.base import InputError
from components.familyseer.config import TuneConfig

from .conftest import HOST, manifest, trials, write_run


def test_the_fingerprint_changes_with_the_machine_and_the_library_versions(fast_fingerprint, monkeypatch):
    from components.familyseer import tuning

    cfg = TuneConfig()

    def fp(**change):
        monkeypatch.setattr(tuning, "host_environment", lambda: {**HOST, **change})
        return tuning.fingerprint(manifest(), "gradient", 0, cfg)

    reference = fp()
    assert fp() == reference                                  # deterministic
    for key, other in (("cpu_model", "Intel(R) Xeon(R) Silver 4210"), ("cpu_count", 16), ("tvm", "0.28.0"),
                       ("xgboost", "2.1.4"), ("tvm_ffi", None)):
        assert fp(**{key: other}) != reference, key


def test_the_host_environment_names_this_machine_and_the_libraries_in_use():
    import tvm
    import xgboost

    from components.familyseer.tuning import host_environment

    env = host_environment()
    assert env is host_environment()                          # read once per process
    assert env["cpu_count"] == os.cpu_count() and env["cpu_model"]
    assert (env["tvm"], env["xgboost"]) == (tvm.__version__, xgboost.__version__)
    assert env["tvm_ffi"] is None or isinstance(env["tvm_ffi"], str)


def test_the_cpu_model_comes_from_cpuinfo_else_from_platform(tmp_path):
    import platform

    from components.familyseer.tuning import _cpu_model

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD  EPYC 7B13\n\n"
                    "processor\t: 1\nmodel name\t: AMD EPYC 7B13\n")
    assert _cpu_model(str(info)) == "AMD EPYC 7B13"
    info.write_text("processor\t: 0\nFeatures\t: fp asimd\n")   # no model name (some ARM kernels)
    assert _cpu_model(str(info)) == (platform.processor() or platform.machine() or "unknown")
    assert _cpu_model(str(tmp_path / "absent")) == _cpu_model(str(info))


def test_a_run_of_another_configuration_is_named_with_both_fingerprints(fast_fingerprint, tmp_path):
    from components.familyseer.tuning import load_current_run

    cfg = TuneConfig()
    fp = fast_fingerprint(manifest(), "gradient", 5, cfg)
    run_dir = write_run(tmp_path / "gradient" / "seed5", fp, trials([(0, 2.0), (1, 3.0)]), seed=5)
    assert load_current_run(run_dir, manifest(), "gradient", 5, cfg)["fingerprint"] == fp
    # another setting, seed, policy or task list: the stored run is not this configuration's
    for args in ((manifest(), "gradient", 5, TuneConfig(trials_per_task=13)), (manifest(), "gradient", 6, cfg),
                 (manifest(), "familyseer", 5, cfg), (manifest(("a", "c")), "gradient", 5, cfg)):
        expected = fast_fingerprint(*args)
        with pytest.raises(InputError, match=rf"{run_dir}: stored fingerprint '{fp}' differs from '{expected}'.*"
                                             r"re-run the tune stage"):
            load_current_run(run_dir, *args)
    bad = manifest()
    del bad["tasks"][0]["structural_hash"]
    with pytest.raises(InputError, match=r"tasks.json: malformed task manifest.*'structural_hash'"):
        load_current_run(run_dir, bad, "gradient", 5, cfg, "zoo/m/tasks.json")
