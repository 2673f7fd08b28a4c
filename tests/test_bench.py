"""attnjax.bench's helpers, checked on a fake clock and fake results (nothing is timed)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from attnjax import bench
from attnjax.bench import attention, report, timing
from attnjax.functional.backends import REGISTRY


class FakeClock:
    """A clock that only moves when a contender 'runs': each call advances it by the next of
    that contender's scripted durations, and is logged."""

    def __init__(self):
        self.now, self.log = 0.0, []

    def __call__(self):
        return self.now

    def contender(self, name, durations):
        durations = iter(durations)

        def call():
            self.log.append(name)
            self.now += next(durations)

        return timing.Contender(name, call)


def test_summarize_matches_numpy_percentiles():
    times = list(np.random.default_rng(0).exponential(size=9))
    q1, median, q3 = np.percentile(times, [25, 50, 75])
    summary = timing.summarize(times)
    assert summary["samples"] == 9
    assert math.isclose(summary["seconds"], median)
    assert math.isclose(summary["iqr_seconds"], q3 - q1)
    assert timing.summarize([2.0]) == {"seconds": 2.0, "iqr_seconds": 0.0, "samples": 1}
    with pytest.raises(ValueError, match="times is empty"):
        timing.summarize([])


def test_interleaved_samples_round_robin_within_budget():
    clock = FakeClock()
    contenders = [
        clock.contender("a", [1.0, 0.5, 0.75, 9.0]),  # warm-up 1.0: budget 2.5 allows 2 calls
        clock.contender("b", [3.0]),  # warm-up longer than the budget: the only sample
        clock.contender("c", [0.25, 0.125, 0.375, 0.25, 9.0]),  # 3 calls (repeats)
    ]
    a, b, c = timing.interleaved_samples(contenders, repeats=3, budget_s=2.5, clock=clock)
    assert clock.log == ["a", "b", "c", "a", "c", "a", "c", "c"]  # warm-ups, then rounds
    assert a == timing.Samples((0.5, 0.75), False, 1.0)
    assert b == timing.Samples((3.0,), True, 3.0)
    assert c.times == (0.125, 0.375, 0.25) and not c.warmup_sample
    assert b.summary()["warmup_sample"] and b.summary()["samples"] == 1
    assert c.summary()["seconds"] == 0.25 and c.summary()["iqr_seconds"] == 0.125
    with pytest.raises(ValueError, match="repeats=0"):
        timing.interleaved_samples(contenders, repeats=0)


def test_interleaved_samples_without_budget_takes_every_repeat():
    clock = FakeClock()
    slow = clock.contender("slow", [50.0, 40.0, 60.0])
    (samples,) = timing.interleaved_samples([slow], repeats=2, clock=clock)
    assert samples.times == (40.0, 60.0)


def test_time_prepared_merges_fields_samples_and_late_fields():
    clock = FakeClock()
    rows = [
        timing.Prepared({"name": "x"}, clock.contender("x", [1.0, 2.0, 4.0])),
        timing.Prepared({"skipped": "no"}),
        timing.Prepared({}, clock.contender("y", [1.0, 3.0, 5.0]), lambda: {"peak": 7}),
    ]
    x, skipped, y = timing.time_prepared(rows, repeats=2, clock=clock)
    assert x["name"] == "x" and x["seconds"] == 3.0 and x["iqr_seconds"] == 1.0
    assert skipped == {"skipped": "no"}
    assert y["seconds"] == 4.0 and y["peak"] == 7 and y["warmup_seconds"] == 1.0


def test_write_json_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    bench.write_json(path, {"a": [1.5, float("nan")], "b": {"c": float("inf")}})
    assert json.loads(path.read_text()) == {"a": [1.5, None], "b": {"c": None}}

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)  # the rename fails: the old file stays whole
    with pytest.raises(OSError, match="disk full"):
        bench.write_json(path, {"a": 2})
    with pytest.raises(TypeError):  # not serializable: nothing is written
        bench.write_json(path, {"a": object()})
    assert json.loads(path.read_text())["a"] == [1.5, None]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]  # no temp files left


def _result(seconds: dict, matmul: float) -> dict:
    rows = [
        {"case": "tiny", "mode": "fwd", "causal": True, "dtype": "float32",
         "implementation": name, "seconds": s}
        for name, s in seconds.items()
    ]  # fmt: skip
    return {"attention": rows, "train": [], "matmul_gflops": {"jax": matmul}}


def test_compare_runs_takes_the_median_ratio_over_rounds():
    before = [_result({"x": 2.0, "y": 1.0}, 100.0), _result({"x": 4.0, "y": None}, 100.0)]
    after = [_result({"x": 1.0, "y": 1.0}, 50.0), _result({"x": 3.0, "y": 2.0}, 50.0)]
    rows = {r["row"]: r for r in bench.compare_runs(before, after)}
    x = rows["tiny fwd causal float32 x"]
    assert (x["before_s"], x["after_s"], x["rounds"]) == (3.0, 2.0, 2)
    assert x["ratio"] == pytest.approx((0.5 + 0.75) / 2)
    assert (x["ratio_min"], x["ratio_max"]) == (0.5, 0.75)
    assert "tiny fwd causal float32 y" not in rows  # skipped in one run: not compared
    assert rows["matmul jax"]["ratio"] == pytest.approx(2.0)  # half the rate: twice the time
    assert "0.625x" in bench.format_comparison(list(rows.values()))
    with pytest.raises(ValueError, match="same, nonzero number of runs"):
        bench.compare_runs(before, after[:1])


@pytest.mark.parametrize(("platform", "only"), [("cpu", ()), ("gpu", ("cudnn",)),
                                                 ("tpu", ("pallas_tpu",))])  # fmt: skip
def test_default_implementations_follow_the_registry(platform, only):
    everywhere = [name for name, b in REGISTRY.items() if b.platforms is None]
    expected = [n for n in REGISTRY if n in everywhere or n in only] + ["auto"]
    assert attention.default_implementations(platform) == expected
    assert "blocked" in expected and "einsum" in expected


def test_options_name_the_bad_flag():
    with pytest.raises(ValueError, match="--modes: 'bwd' is unknown"):
        bench.Options(modes=("bwd",)).checked()
    with pytest.raises(ValueError, match="--implementations: 'flash' is unknown"):
        bench.Options(implementations=("flash",)).checked()
    checked = bench.Options(implementations=("einsum",)).checked()
    assert checked.implementations == ("einsum",)


def test_case_flops_and_grid_bytes():
    case = bench.CASES["tiny"]
    b, t, n, h = case.batch, case.length, case.heads, case.head_dim
    assert case.flops("fwd", False) == 4 * b * n * t * t * h
    assert case.flops("fwd_bwd", True) == 3 * 4 * b * n * t * (t + 1) / 2 * h
    assert case.grid_bytes(2) == b * n * t * t * 2
    assert report.finite((1.0, float("-inf"))) == [1.0, None]


def test_import_has_no_process_wide_side_effects():
    """Importing attnjax.bench defines no absl flags, changes no environment variable, does not
    import torch or the training stack, and prints nothing (a fresh interpreter)."""
    code = (
        "import os, sys\n"
        "from absl import flags\n"
        "import attnjax\n"
        "before, env = len(list(flags.FLAGS)), dict(os.environ)\n"
        "from attnjax import bench\n"
        "assert bench.run and attnjax.bench is bench\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] == 'torch'\n"
        "          or m.startswith('attnjax.training')]\n"
        "print(len(list(flags.FLAGS)) - before, dict(os.environ) == env, loaded)\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout == "0 True []\n", result.stdout + result.stderr


def test_replica_suite_times_vmapped_and_sequential_steps_that_agree(capsys):
    from attnjax.bench import replicas

    [row] = replicas.replica_rows(["tiny"], repeats=1)  # checks both give the same losses
    assert row["seeds"] == 2 and row["vmapped_s"] > 0 and row["sequential_s"] > 0
    assert row["sequential_over_vmapped"] == row["sequential_s"] / row["vmapped_s"]
    assert "sequential/vmapped" in capsys.readouterr().out


def test_replica_settings_are_checked():
    with pytest.raises(ValueError, match="--replica_settings"):
        bench.Options(replica_settings=("huge",)).checked()
