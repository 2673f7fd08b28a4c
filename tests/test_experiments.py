"""The absl launchers end to end, in subprocesses: outputs, kill-and-resume, sweeps, bad input."""

import csv
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from attnjax.training.checkpoint import load_checkpoint
from attnjax.training.metrics import read_metrics

ROOT = pathlib.Path(__file__).resolve().parent.parent
ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def _command(module, *args):
    return [sys.executable, "-m", f"experiments.{module}", *args]


def _run(module, *args, timeout=300):
    return subprocess.run(
        _command(module, *args), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout
    )


RESUME_ARGS = (
    "--config=configs/train.py:tiny",
    "--config.train.steps=400",
    "--config.train.checkpoint_every=50",
    "--config.train.log_every=100",
    "--config.train.eval_every=400",
)


def _wait_for_checkpoint(directory: pathlib.Path, process, timeout=600):
    """Until the first checkpoint step appears (a loaded machine may take minutes to start)."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir()):
            return
        time.sleep(0.02)
    pytest.fail(f"no checkpoint in {directory} after {timeout} s (exit code {process.poll()})")


@pytest.mark.slow
def test_killed_run_resumes_to_identical_parameters(tmp_path):
    resumed = tmp_path / "resumed"
    process = subprocess.Popen(
        _command("train", *RESUME_ARGS, f"--workdir={resumed}"),
        cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    whole = subprocess.Popen(  # the uninterrupted run, meanwhile
        _command("train", *RESUME_ARGS, f"--workdir={tmp_path / 'whole'}"),
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _wait_for_checkpoint(resumed / "checkpoints", process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL  # it was still running
    first = load_checkpoint(resumed / "checkpoints")
    assert int(first["step"]) < 400

    out, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, err[-2000:]
    assert "eval loss" in out
    for name in ("config.json", "metrics.jsonl", "result.json"):
        assert (tmp_path / "whole" / name).is_file()

    again = _run("train", *RESUME_ARGS, f"--workdir={resumed}")
    assert again.returncode == 0, again.stderr[-2000:]
    a = load_checkpoint(tmp_path / "whole" / "checkpoints")
    b = load_checkpoint(resumed / "checkpoints")
    assert int(a["step"]) == int(b["step"]) == 400
    leaves_a, leaves_b = _leaves(a["params"]), _leaves(b["params"])
    assert leaves_a.keys() == leaves_b.keys()
    for name in leaves_a:
        np.testing.assert_array_equal(leaves_a[name], leaves_b[name], err_msg=name)
    steps = [r["step"] for r in read_metrics(resumed) if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 400  # each logged step once


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_leaves(value, f"{prefix}/{key}"))
        return out
    return {prefix: np.asarray(tree)}


@pytest.mark.slow
def test_sweep_records_a_failing_point_and_rerun_skips(tmp_path):
    args = (
        "--config=configs/sweep.py:tiny",
        "--config.sweep.heads=(1, 3)",
        "--config.sweep.layers=(1,)",
        f"--workdir={tmp_path}",
    )
    first = _run("sweep", *args)
    assert first.returncode == 0, first.stderr[-2000:]
    assert f"sweep workdir: {tmp_path}" in first.stdout
    with open(tmp_path / "results.csv") as file:
        rows = {int(r["heads"]): r for r in csv.DictReader(file)}
    assert rows[1]["status"] == "ok" and float(rows[1]["accuracy"]) >= 0
    assert int(rows[1]["params_total"]) > 0
    assert rows[3]["status"] == "failed" and "num_heads=3" in rows[3]["reason"]
    for name in ("accuracy_heatmap.png", "sequence_accuracy_heatmap.png", "metrics_vs_params.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert "failures:" in first.stdout
    again = _run("sweep", *args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("skipped") == 2


@pytest.mark.slow
def test_two_sweeps_on_one_workdir_at_once_share_the_points(tmp_path):
    args = (
        "--config=configs/sweep.py:tiny",
        "--config.sweep.heads=(1, 2)",
        "--config.sweep.layers=(1, 2)",
        f"--workdir={tmp_path}",
    )
    sweeps = [
        subprocess.Popen(
            _command("sweep", *args),
            cwd=ROOT,
            env=ENV,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for _ in range(2)
    ]
    outputs = [sweep.communicate(timeout=600) for sweep in sweeps]
    for sweep, (_, err) in zip(sweeps, outputs, strict=True):
        assert sweep.returncode == 0, err[-2000:]
    said = [line for out, _ in outputs for line in out.splitlines()]
    trained = sorted(line.split(":")[0] for line in said if re.match(r"h\d_l\d: accuracy", line))
    assert trained == ["h1_l1", "h1_l2", "h2_l1", "h2_l2"], said  # each by one of the two
    again = _run("sweep", *args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("already finished (ok), skipped") == 4, again.stdout


@pytest.mark.parametrize(
    "module, args, needle",
    [
        ("train", ["--config.model.num_hedas=2"], "num_heads"),
        ("train", ["--config.task.seq_len=5"], "task.seq_len"),
        ("sweep", ["--workdir=/dev/null/run"], "workdir"),
        ("sweep", ["--config.task.prefix_len=20"], "task.prefix_len"),  # before any point runs
        ("sweep", ["--config.sweep.head_dim=0"], "sweep.head_dim"),
        ("sweep", ["--merge", "--workdir=/nonexistent/attnjax_sweep"], "/nonexistent"),
        (  # every point NaN: exit 1 after the table
            "sweep",
            ["--config.train.lr=1e9", "--config.sweep.heads=(1,)", "--config.sweep.layers=(1,)"],
            "no point",
        ),
        ("train", ["--config.train.lr=1e9", "--config.train.steps=6"], "loss is nan"),
        ("train", ["--config.train.seed=-1"], "train.seed"),
        ("train", ["--config.model.max_seq_len=8"], "model.max_seq_len=8 is shorter than task"),
        ("sweep", ["--config.train.keep=0"], "train.keep"),  # before any point runs
        ("train", ["--config.mesh.model=1000"], "only 1 exist"),
        ("train", ["--config.train.dtype=bfloat16"], "config.train has: batch_size, checkpoint"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(tmp_path, module, args, needle):
    config = "configs/train.py:tiny" if module == "train" else "configs/sweep.py:tiny"
    workdir = [] if any(a.startswith("--workdir") for a in args) else [f"--workdir={tmp_path}"]
    result = _run(module, f"--config={config}", *workdir, *args)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and needle in error_lines[0], result.stderr[-2000:]


def test_merge_reads_the_points_of_the_sweep_in_the_workdir(tmp_path, monkeypatch):
    from attnjax.training import sweep as sweep_lib
    from configs import sweep as sweep_config

    monkeypatch.setattr(sweep_lib, "train_replicas", _fake_run)
    config = sweep_config.get_config("tiny")
    config.sweep.update(heads=(1, 3), layers=(1,), shard="0/2")  # h3_l1 left to another shard
    sweep_lib.run_sweep(config, tmp_path, echo=lambda _: None)
    merged = _run("sweep", "--merge", f"--workdir={tmp_path}")  # default --config: a 4x3 grid
    assert merged.returncode == 0, merged.stderr[-2000:]
    with open(tmp_path / "results.csv") as file:
        rows = [(r["heads"], r["layers"], r["status"]) for r in csv.DictReader(file)]
    assert rows == [("1", "1", "ok"), ("3", "1", "missing")]


def _fake_run(config, workdir, replicas, **options):
    from tests.test_training import fake_replica_result

    workdir.mkdir(parents=True, exist_ok=True)
    return [fake_replica_result(r, config.model.num_heads) for r in replicas]


@pytest.mark.slow
@pytest.mark.parametrize(
    "config",
    ["configs/repro/zoology_mqar.py:quick", "configs/repro/induction_phase_change.py:quick"],
)
def test_reproductions_run_and_print_their_table(tmp_path, config):
    result = _run("sweep", f"--config={config}", f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "± : 95% Student-t interval" in result.stdout
    cells = list(csv.DictReader((tmp_path / "results.csv").read_text().splitlines()))
    assert cells and all(c["status"] == "ok" for c in cells)
    assert (tmp_path / "telemetry.png").stat().st_size > 1000
    by_lr = list(csv.DictReader((tmp_path / "results_by_lr.csv").read_text().splitlines()))
    rates = {float(r["lr"]) for r in by_lr}
    assert len(rates) == (2 if "zoology" in config else 1)
