"""experiments/patterns.py end to end on the bundled MiniLM, and its one-line user errors."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]


def run_patterns(*flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "experiments.patterns", *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_mole_sentences_print_focus_and_similarity_and_write_pngs_and_pages(tmp_path):
    result = run_patterns(f"--workdir={tmp_path}", "--html")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for sentence in (
        "American shrew mole",
        "One mole of carbon dioxide",
        "Take a biopsy of the mole",
    ):
        assert f"\"{sentence}\": where 'mole' looks, per layer" in out
    assert out.count("  layer 5: mean over heads:") == 3  # 6 layers per sentence
    assert "top heads: h" in out and "cosine similarity of the 'mole' vectors" in out
    assert "s0 vs s1" in out and "s1 vs s2" in out and "mean" in out
    names = {p.name for p in tmp_path.iterdir()}
    expected = {f"s{i}_{kind}.png" for i in range(3) for kind in ("heads", "mole")}
    assert expected | {"mole_similarity.png", "circuit_spectra.png"} <= names
    assert all((tmp_path / name).stat().st_size > 1000 for name in names)
    pages = {f"s{i}_{kind}_view.html" for i in range(3) for kind in ("model", "head")}
    assert pages | {"mole_in_context.html"} <= names
    assert "Take a biopsy of the mole" in (tmp_path / "s2_head_view.html").read_text()


@pytest.mark.slow
def test_missing_word_is_one_line_naming_word_and_sentence(tmp_path):
    result = run_patterns(
        "--word=shrew", "--sentences=American shrew mole,One mole of carbon dioxide",
        f"--workdir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "'shrew'" in error[0] and "One mole of carbon dioxide" in error[0]


def test_bad_model_dir_exits_1_without_traceback(tmp_path):
    missing = tmp_path / "no_such_model"
    result = run_patterns(f"--model_dir={missing}", f"--workdir={tmp_path}")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "error:" in result.stderr and str(missing) in result.stderr


def test_unwritable_workdir_fails_before_the_model_runs():
    result = run_patterns("--workdir=/proc/attnjax_patterns")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "where 'mole' looks" not in result.stdout
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "workdir='/proc/attnjax_patterns'" in error[0], result.stderr
