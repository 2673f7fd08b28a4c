"""Deviceless compiles for TPU and NVIDIA GPU (marker ``aot``; ``uv sync --group tpu`` and
``--group cuda`` install what they need; without it they skip, naming the group).

For TPU topologies v5e:2x2 and v4:2x2x1 and eight H200s, every implementation that applies
(and ``implementation=None``) is compiled forward and backward in one program, on one device,
a ``data`` mesh and a ``data x model`` mesh, with GQA, causal and padded keys. The compiled
programs must gather no shard of q, k or v, give each device 1/shards of the output and
gradients, and call the intended kernel. The default sweep's train step compiles for v5e:2x2
on ``data=4`` and ``data=2, model=2`` with the Pallas kernel.

The compiles run in a subprocess without network (``unshare -n``): libtpu may otherwise query
a cloud metadata server. Where ``unshare -n`` is not permitted the tests skip, saying so.
Run: ``uv sync --locked --group tpu --group cuda && unshare -n -- env TPU_SKIP_MDS_QUERY=1
TPU_WORKER_HOSTNAMES=localhost JAX_PLATFORMS=cpu uv run --no-sync pytest -m aot``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.aot

ROOT = pathlib.Path(__file__).parent.parent
ISOLATED = [
    "unshare", "-n", "--", "env", "TPU_SKIP_MDS_QUERY=1", "TPU_WORKER_HOSTNAMES=localhost",
    "JAX_PLATFORMS=cpu",
    "ALLOW_MULTIPLE_LIBTPU_LOAD=1",  # compile-only: pytest-xdist workers may load it together
]  # fmt: skip
GROUPS = {"tpu": ("libtpu",), "cuda": ("jax-cuda12-plugin", "nvidia-cudnn-cu12")}


def _require(platform: str) -> None:
    """Skip unless the platform's dependency group is installed and unshare -n works."""
    group = "tpu" if platform == "tpu" else "cuda"
    for package in GROUPS[group]:
        try:
            importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"{package} is not installed: `uv sync --locked --group {group}`")
    refused = _unshare_refused()
    if refused:
        pytest.skip(f"`unshare -n` is not permitted here ({refused}); no compile without it")


@functools.cache
def _unshare_refused() -> str | None:
    try:
        done = subprocess.run([*ISOLATED, "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return str(error)
    return None if done.returncode == 0 else done.stderr.strip()[-300:]


def _compile(*args: str) -> dict:
    _require(args[1])
    command = [*ISOLATED, sys.executable, "-m", "tests._aot_compile", *args]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _check_attention(results: dict, platform: str) -> None:
    kernel = "pallas_tpu" if platform == "tpu" else "cudnn"
    assert len(results) == 18  # 6 implementations x 3 meshes
    for name, got in results.items():
        implementation = name.split("/")[0]
        assert got["input_gathers"] == 0 and got["all_gathers"] == 0, (name, got)
        assert got["output_bytes"] == got["expected_bytes"], (name, got)
        # memory_analysis agrees, plus the output buffer table.
        assert 0 <= got["memory_output_bytes"] - got["expected_bytes"] <= 1024, (name, got)
        uses_kernel = implementation in (kernel, "None")
        assert got["kernels"] == {
            "pallas_tpu": uses_kernel and platform == "tpu",
            "cudnn": uses_kernel and platform == "cuda",
        }, (name, got)
        if uses_kernel and platform == "tpu":  # forward, backward dK/dV, backward dQ
            assert got["mosaic_calls"] == 3, (name, got)
        assert got["cudnn_backward"] == (uses_kernel and platform == "cuda"), (name, got)


@pytest.mark.parametrize("topology", ["v5e:2x2", "v4:2x2x1"])
def test_tpu_attention_compiles_per_shard_with_the_pallas_kernel(topology):
    _check_attention(_compile("attention", "tpu", topology), "tpu")


def test_h200_attention_compiles_per_shard_with_cudnn():
    _check_attention(_compile("attention", "cuda", "h200"), "cuda")


def test_every_gpu_target_config_parses_and_compiles_cudnn_attention():
    results = _compile("gpu_targets", "cuda", "all")
    cudnn = {"pallas_tpu": False, "cudnn": True}
    assert results == {
        "h100": {"device_kind": "NVIDIA H100 80GB HBM3", "kernels": cudnn},
        "h200": {"device_kind": "NVIDIA H200 141GB HBM3e", "kernels": cudnn},
    }


def test_default_sweep_train_step_compiles_for_v5e_with_pallas():
    results = _compile("train_step", "tpu", "v5e:2x2")
    assert set(results) == {"data=4,model=1", "data=2,model=2"}
    for mesh, got in results.items():
        assert got["kernels"] == {"pallas_tpu": True, "cudnn": False}, (mesh, got)


def _check_tiny_plan(row: dict, topology: str, memory: int, source: str) -> None:
    assert row["topology"] == topology and row["mesh"] == "data=2,fsdp=2,model=1", row
    assert row["fits"] is True and row["fit_source"] == source, row
    assert row["device_memory"] == memory and 0 < row["bytes"]["total"] < memory, row
    assert row["headroom"] == memory - row["bytes"]["total"], row
    # fsdp: parameters gathered, gradients reduced (all-reduce or reduce-scatter)
    assert row["collectives"].get("all-gather", 0) > 0, row
    assert row["roofline"]["step_s"] > 0 and row["roofline"]["tokens_per_s"] > 0, row


def test_compile_check_on_tpu_fits_and_reports_the_compilers_refusal():
    rows = _compile("plan", "tpu", "v5e:2x2")
    _check_tiny_plan(rows["tiny"], "v5e:2x2", 16 * 2**30, "compiler")
    assert rows["tiny"]["attention"] == "pallas_tpu"
    oom = rows["oom"]
    assert oom["fits"] is False and "memory" in oom["compiler_message"], oom
    assert oom["bytes"]["total"] > oom["device_memory"] > 15 * 2**30, oom  # "Used X of Y hbm"
    assert oom["bytes"]["arguments"] > 2**20 * 15 * 12  # the batch alone: 12 bytes a token


def test_compile_check_on_h200_compares_with_the_memory_table():
    rows = _compile("plan", "cuda", "h200:1x1x8")
    _check_tiny_plan(rows["tiny"], "h200:1x1x8", 141 * 10**9, "memory table")
