"""scripts/device_check.py (made for one H200) runs end to end in its tiny ``--smoke`` mode on
CPU and writes a complete JSON report whose numbers agree with the float32 reference."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).parent.parent


def test_device_check_smoke_mode_runs_and_writes_its_report(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "OUT": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "device_check.py"), "--smoke"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert report["failed"] == [] and report["smoke"] is True
    assert not list(tmp_path.glob("*.tmp"))  # written atomically
    padding = report["correctness"]["padding"]  # T != S, padded queries and keys, GQA
    for implementation in ("blocked", "xla", "None"):
        got = padding[implementation]
        assert got["ok"] and got["out"] < 2e-2 and got["grads"] < 4e-2, (implementation, got)
    assert "skipped" in padding["cudnn"]  # no GPU here
    attention = report["attention"]
    for name in ("attnjax[auto]", "jax.nn[xla]"):
        assert attention[name]["ms"] > 0 and attention[name]["tflops"] > 0, name
    gpt = report["gpt2_small"]
    assert gpt["tokens_per_s"] > 0 and 0 < gpt["mfu_vs_h200_bf16_dense"] < 1
    assert gpt["loss"] > 0
