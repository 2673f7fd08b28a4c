"""experiments.benchmark (a launcher over attnjax.bench) end to end on tiny shapes: every row
and field is written; timings are measured, never asserted. Runs with or without torch (torch
rows only when it exists)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
try:
    import torch  # noqa: F401

    HAS_TORCH = True
except ImportError:
    HAS_TORCH = False


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "experiments.benchmark", "--matmul_size=64", *args],
        cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_attention_suite_writes_every_row(tmp_path):
    path = tmp_path / "bench.json"
    process = _run(
        "--suite=attention", "--cases=tiny", "--modes=fwd_bwd", "--causal=true",
        "--implementations=einsum,auto", "--repeats=1", f"--json={path}",
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    result = json.loads(path.read_text())

    assert result["machine"]["backend"] == "cpu"
    assert set(result["matmul_gflops"]) == ({"jax", "torch"} if HAS_TORCH else {"jax"})
    peers = ["jax.nn", "flax.nnx"] + (["torch.sdpa"] if HAS_TORCH else [])
    rows = result["attention"]
    assert [r["implementation"] for r in rows] == ["attnjax[einsum]", "attnjax[auto]", *peers]
    b, t, n, h = 2, 16, 4, 8  # CASES["tiny"]; causal counts t(t+1)/2 pairs, fwd_bwd 3x fwd
    for row in rows:
        assert (row["case"], row["mode"], row["causal"]) == ("tiny", "fwd_bwd", True)
        assert row["skipped"] is None, row
        assert row["flops"] == 3 * 4 * b * n * (t * (t + 1) / 2) * h
        assert row["seconds"] > 0 and row["samples"] >= 1 and row["peak_bytes"] > 0
        assert row["iqr_seconds"] >= 0 and row["warmup_seconds"] > 0
        assert row["gflops"] > 0 and row["percent_of_matmul"] > 0
        assert set(row["ratios"]) == {p for p in peers if p != row["implementation"]}
    assert rows[0]["memory"] == "xla" and rows[0]["compile_seconds"] > 0
    assert result["train"] == []
    assert "attnjax[einsum]" in process.stdout


@pytest.mark.slow  # builds a model (its initializers compile one by one)
def test_train_suite_times_both_frameworks(tmp_path):
    path = tmp_path / "bench.json"
    process = _run("--suite=train", "--train_settings=tiny", "--train_repeats=1", f"--json={path}")
    assert process.returncode == 0, process.stderr[-3000:]
    train = json.loads(path.read_text())["train"]
    assert [r["framework"] for r in train] == ["attnjax"] + (["torch nanoGPT"] if HAS_TORCH else [])
    for row in train:
        assert row["setting"] == "tiny" and row["tokens_per_s"] > 0 and row["gflops"] > 0
        assert row["samples"] == 1 and row["iqr_seconds"] == 0
    assert train[0]["compile_seconds"] > 0
    if HAS_TORCH:  # the two models are configured alike: same parameter count
        assert train[0]["params"] == train[1]["params"]
        assert set(train[0]["ratios"]) == {"torch nanoGPT"}
    assert "tokens/s" in process.stdout


def test_unknown_case_is_named():
    process = _run("--cases=b4_t999")
    assert process.returncode == 1
    assert "--cases: 'b4_t999' is unknown" in process.stderr
