"""experiments.count_params and experiments.count_sweep in subprocesses: JSON output, exit codes,
one-line errors without tracebacks."""

import csv
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def run(module: str, *flags: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"experiments.{module}", *flags],
        cwd=ROOT, env={**ENV, **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_json_report_of_gpt3_175b_with_measured_total():
    result = run("count_params", "--config=configs/gpt3.py:size=175b", "--json")
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert values["per_head"] == {
        "query": 1_572_864, "key": 1_572_864, "value_down": 1_572_864, "value_up": 1_572_864,
        "total": 6_291_456,
    }  # fmt: skip
    assert values["attention"] == 57_982_058_496
    assert values["num_layers"] == values["num_heads"] == 96
    assert values["measured_total"] == values["total"] == 174_604_259_328
    assert values["embedding"] + values["unembedding"] + values["non_embedding"] == values["total"]
    assert values["flops_per_token"] > 2 * values["non_embedding"]


def test_bad_override_is_one_line_naming_the_field():
    result = run("count_params", "--config=configs/gpt2.py:small", "--config.model.num_kv_heads=5")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: num_kv_heads=5 must divide num_heads=12"


def test_count_sweep_writes_table_csv_and_png_under_attnjax_runs(tmp_path):
    result = run(
        "count_sweep", "--config=configs/gpt2.py:small", "--heads=1,12", "--layers=1,12",
        "--fixed=head_dim", ATTNJAX_RUNS=str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    tmp_path = tmp_path / "count_sweep"  # no --workdir: $ATTNJAX_RUNS/count_sweep
    with (tmp_path / "count_sweep_head_dim.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [(r["heads"], r["model_dim"], r["head_dim"]) for r in rows] == [
        ("1", "768", "64"), ("1", "768", "64"), ("12", "768", "64"), ("12", "768", "64"),
    ]  # fmt: skip
    assert rows[0]["attention"] == str(4 * 768 * 64)  # 1 layer: the four maps of one 64-wide head
    assert rows[-1]["total"] == "124439808"  # 12 heads of 64 x 12 layers is GPT-2 small
    assert (tmp_path / "count_sweep_head_dim.png").read_bytes()[:4] == b"\x89PNG"
    assert "124,439,808" in result.stdout


def test_zero_or_negative_seq_len_and_batch_size_are_refused_naming_the_flag():
    for flag in ("--seq_len=0", "--batch_size=0", "--seq_len=-3"):
        result = run("count_params", "--config=configs/gpt2.py:small", "--json", flag)
        assert result.returncode == 1, (flag, result.stdout)
        name, value = flag.split("=")
        assert result.stderr.strip() == f"error: {name} must be a positive int, got {value}"
        assert result.stdout == ""


def test_encoder_report_has_no_unembedding_or_cached_decoding():
    text = run("count_params", "--config=configs/minilm.py", "--seq_len=64")
    assert text.returncode == 0, text.stderr
    assert "unembedding               none (encoder)" in text.stdout
    assert "tied" not in text.stdout
    assert "decode" not in text.stdout and "KV cache" not in text.stdout
    assert "forward FLOPs per token (T=64, non-causal, full grid)" in text.stdout
    result = run("count_params", "--config=configs/minilm.py", "--json", "--batch_size=3")
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert (values["seq_len"], values["batch_size"]) == (128, 3)
    assert values["unembedding"] == 0 and values["unembedding_kind"] == "none"
    assert values["decode_flops_per_token"] is None and values["kv_cache_bytes"] is None
    assert values["causal"] is False
    assert values["flops_per_token"] == 22_413_312  # the full grid, not the causal half
    assert values["measured_total"] == values["total"] == 22_565_376
