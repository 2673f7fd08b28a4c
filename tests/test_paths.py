"""One rule for where outputs and caches go (attnjax.paths)."""

import pathlib

import jax
import ml_collections

from attnjax import paths
from attnjax.training import sweep


def test_outputs_go_under_attnjax_runs(monkeypatch, tmp_path):
    monkeypatch.delenv("ATTNJAX_RUNS", raising=False)
    assert paths.runs_dir("patterns") == pathlib.Path.home() / "attnjax_runs" / "patterns"
    monkeypatch.setenv("ATTNJAX_RUNS", str(tmp_path))
    assert paths.runs_dir("count_sweep") == tmp_path / "count_sweep"
    config = ml_collections.ConfigDict(
        {"task": {"name": "induction"}, "sweep": {"fixed": "model_dim"}}
    )
    monkeypatch.setattr(sweep, "results_description", lambda config: {"a": 1})
    assert sweep.default_workdir(config).parent == tmp_path


def test_caches_go_under_attnjax_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("ATTNJAX_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_dir("jax") == tmp_path / "xdg" / "attnjax" / "jax"
    monkeypatch.setenv("ATTNJAX_CACHE", str(tmp_path / "mine"))
    updates = {}
    monkeypatch.setattr(jax.config, "update", lambda name, value: updates.update({name: value}))
    directory = sweep.enable_compilation_cache()
    assert directory == (tmp_path / "mine" / "jax").resolve() and directory.is_dir()
    assert updates["jax_compilation_cache_dir"] == str(directory)
