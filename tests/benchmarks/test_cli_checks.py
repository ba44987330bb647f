"""Benchmark scripts refuse bad arguments before any heavy work: exit status 2, a message naming the
argument, the value and what is expected, no traceback and no (half-)written output."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, load_script

PARAMS_BAD_YAML = "har: [1\n"
PARAMS_SCALAR = "har: 5\n"
PARAMS_INVALID = "har:\n  seed: abc\n"


def _run(script: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd or REPO)


def _refused(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "error:" in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


@pytest.mark.parametrize("script, args, needles", [
    ("benchmarks/cli_startup.py", ["--bogus"], ["unrecognized arguments: --bogus"]),
    ("benchmarks/cli_startup.py", ["--repeats", "0"], ["--repeats", "'0'", "positive integer"]),
    ("benchmarks/stage_overhead.py", ["--repeats", "0"], ["--repeats", "'0'", "positive integer"]),
    ("benchmarks/cpu_speed_states.py", ["--seconds", "0"], ["--seconds", "'0'", "finite number > 0"]),
    ("benchmarks/cpu_speed_states.py", ["--load-seconds", "nan"], ["--load-seconds", "'nan'", "finite number > 0"]),
    ("benchmarks/cpu_speed_states.py", ["--size", "0"], ["--size", "'0'", "positive integer"]),
    ("benchmarks/cpu_speed_states.py", ["--kind", "gpu"], ["--kind", "'gpu'"]),
    ("benchmarks/skrull/bench_speedup.py", ["--tflops", "0"], ["--tflops", "'0'", "finite number > 0"]),
    ("benchmarks/skrull/bench_speedup.py", ["--tflops", "-5"], ["--tflops", "'-5'", "finite number > 0"]),
    ("benchmarks/skrull/bench_speedup.py", ["--tflops", "nan"], ["--tflops", "'nan'", "finite number > 0"]),
    ("benchmarks/skrull/bench_speedup.py", ["--tflops", "400", "inf"], ["--tflops", "'inf'"]),
    ("benchmarks/skrull/bench_speedup.py", ["--batches", "0"], ["--batches", "'0'"]),
    ("benchmarks/har/bench_latency.py", ["--sizes", "0"], ["--sizes", "'0'"]),
    ("benchmarks/har/bench_latency.py", ["--sizes", "48", "50"], ["--sizes [50]", "multiples of 8"]),
    ("benchmarks/har/bench_latency.py", ["--chunks", "0"], ["--chunks", "'0'"]),
    ("benchmarks/har/bench_latency.py", ["--threads", "0"], ["--threads", "'0'"]),
    ("benchmarks/familyseer/bench_builder.py", ["--workers", "0"], ["--workers", "'0'"]),
    ("benchmarks/familyseer/bench_builder.py", ["--batches", "-1"], ["--batches", "'-1'"]),
    ("benchmarks/har/stream_training.py", ["--stream-passes", "-1"], ["--stream-passes", "'-1'"]),
    ("benchmarks/har/stream_training.py", ["--params", "/nonexistent/p.yaml"], ["--params /nonexistent/p.yaml: not found"]),
    ("benchmarks/har/validate_choices.py", ["--params", "/nonexistent/p.yaml"],
     ["--params /nonexistent/p.yaml: not found", "'har' section"]),
    ("benchmarks/har/validate_choices.py", ["--clips-per-class", "0"], ["--clips-per-class", "'0'"]),
    ("benchmarks/har/imfe_scale_probe.py", ["--threads", "0"], ["--threads", "'0'"]),
    ("benchmarks/vfda/tune_lr.py", ["--data", "/nonexistent/vfda"], ["--data", "/nonexistent/vfda", "institutes.json"]),
    ("benchmarks/vfda/tune_lr.py", ["--lr", "nan"], ["--lr", "'nan'"]),
    ("benchmarks/vfda/perturbation_strength.py", ["--data", "/nonexistent/vfda"], ["--data", "/nonexistent/vfda"]),
    ("benchmarks/vfda/perturbation_strength.py", ["--draws", "0"], ["--draws", "'0'"]),
    ("benchmarks/vfda/bench_simulation.py", ["--rounds", "0"], ["--rounds", "'0'"]),
    ("benchmarks/vfda/bench_simulation.py", ["--rounds", "5000"], ["--rounds 5000", "num_rounds"]),
    ("benchmarks/januspipe/real_vs_sim.py", ["--set", "x=[1"], ["--set", "x=[1", "YAML"]),
    ("benchmarks/januspipe/profile_estimators.py", ["--reps", "2"], ["--reps 2", "expected >= 4"]),
    ("benchmarks/januspipe/profile_estimators.py", ["--reps", "101"], ["profiling.reps", "101"]),
    ("benchmarks/januspipe/profile_estimators.py", ["--repeats", "0"], ["--repeats", "'0'", "positive integer"]),
])
def test_bad_arguments_exit_2_before_running(script, args, needles, tmp_path):
    out = tmp_path / "result.json"
    has_out = script != "benchmarks/har/stream_training.py"
    proc = _run(script, *args, *(["--out", str(out)] if has_out else []))
    _refused(proc, *needles)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("script", ["benchmarks/cli_startup.py", "benchmarks/stage_overhead.py",
                                    "benchmarks/cpu_speed_states.py",
                                    "benchmarks/skrull/bench_speedup.py",
                                    "benchmarks/har/bench_latency.py", "benchmarks/familyseer/bench_builder.py",
                                    "benchmarks/vfda/bench_simulation.py", "benchmarks/vfda/tune_lr.py",
                                    "benchmarks/januspipe/real_vs_sim.py",
                                    "benchmarks/januspipe/profile_estimators.py"])
def test_an_output_path_that_is_a_folder_is_refused_before_running(script, tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    _refused(_run(script, "--out", str(folder)), "--out", str(folder), "a folder")
    assert list(folder.iterdir()) == [] and sorted(tmp_path.iterdir()) == [folder]


def test_an_output_path_under_a_file_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _refused(_run("benchmarks/skrull/bench_speedup.py", "--out", str(blocker / "sub" / "r.json")),
             "--out", str(blocker), "is a file")


@pytest.mark.parametrize("script, extra", [("benchmarks/har/stream_training.py", []),
                                           ("benchmarks/har/validate_choices.py", []),
                                           ("benchmarks/har/imfe_scale_probe.py", ["--teacher", "TEACHER"])])
@pytest.mark.parametrize("content, needles", [(PARAMS_BAD_YAML, ["not valid YAML"]),
                                              (PARAMS_SCALAR, ["har", "expected a mapping", "5"]),
                                              (PARAMS_INVALID, ["har.seed", "'abc'"])])
def test_bad_params_files_are_named_without_a_traceback(script, extra, content, needles, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(content)
    teacher = tmp_path / "tvl1.pt"
    teacher.write_bytes(b"")  # only its existence is checked before the params
    extra = [str(teacher) if e == "TEACHER" else e for e in extra]
    _refused(_run(script, "--params", str(params), *extra), str(params), *needles)


def test_imfe_scale_probe_refuses_a_bad_device(tmp_path):
    teacher = tmp_path / "tvl1.pt"
    teacher.write_bytes(b"")
    _refused(_run("benchmarks/har/imfe_scale_probe.py", "--device", "gpu0", "--teacher", str(teacher),
                  "--out", str(tmp_path / "p.json")), "--device gpu0", "torch device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tvl1.pt"]


@pytest.fixture(scope="module")
def device_check():
    return load_script("benchmarks/vfda/device_check.py")


@pytest.mark.parametrize("args, needles", [(["--profile", "medium"], ["profile", "'medium'", "expected"]),
                                           (["--federations", "bogus"], ["--federations", "'bogus'", "expected"])])
def test_device_check_names_a_bad_profile_or_federation(device_check, args, needles, tmp_path, capsys):
    assert device_check.main(["--devices", "cpu", *args, "--out", str(tmp_path / "d.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and all(n in err for n in needles), err
    assert list(tmp_path.iterdir()) == []


def test_cpu_speed_states_without_the_mlip_data_names_it(tmp_path):
    # --kind januspipe reads data/mlip below the working directory: here there is none
    proc = _run("benchmarks/cpu_speed_states.py", "--kind", "januspipe", "--seconds", "1",
                "--out", str(tmp_path / "out" / "s.json"), cwd=tmp_path)
    _refused(proc, "data/mlip", "file not found")
    assert list(tmp_path.iterdir()) == []


def test_cpu_speed_states_records_samples_and_a_consistent_summary(tmp_path):
    import json

    out = tmp_path / "s.json"
    proc = _run("benchmarks/cpu_speed_states.py", "--seconds", "0.3", "--size", "32", "--reps", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(out.read_text())
    s, ms = rec["summary"], [v for _, v in rec["samples"]]
    assert s["samples"] == len(ms) >= 1 and s["kind"] == "matmul" and s["load_seconds"] == 0
    assert s["min_ms"] == min(ms) <= s["median_ms"] <= s["p90_ms"] <= s["max_ms"] == max(ms)
    assert 0 <= s["slow_share"] <= 1 and s["max_over_min"] == max(ms) / min(ms)
