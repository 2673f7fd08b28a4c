"""Seeds and learning rates trained as one vmapped program: each replica equals its separate
run, a kill resumes bit-identically, a diverging replica is recorded while the others go on,
early stopping freezes replicas, the replica axis splits over devices, bad settings are named."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from attnjax.training.checkpoint import load_checkpoint
from attnjax.training.loop import train_and_evaluate
from attnjax.training.metrics import read_metrics
from attnjax.training.replicas import Replica, replicas_for, train_replicas
from configs import train as train_config

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _config(**train):
    config = train_config.get_config("tiny")
    config.train.update({"steps": 12, "checkpoint_every": 6, "log_every": 3, "eval_every": 6})
    config.train.update(train)
    return config


def _with(config, **train):
    copy = config.copy_and_resolve_references()
    copy.unlock()
    copy.train.update(**train)
    copy.lock()
    return copy


def _params(checkpoint_dir, replica=None):
    saved = load_checkpoint(checkpoint_dir)
    tree = saved["params"] if replica is None else saved["train"]["params"]
    leaves = jax.tree.leaves(tree)
    return leaves if replica is None else [leaf[replica] for leaf in leaves]


REPLICAS = [Replica(0, 3e-3), Replica(1, 3e-3), Replica(0, 1e-2), Replica(1, 1e-2)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Four replicas (2 seeds x 2 learning rates) trained once: ``(config, workdir, results)``."""
    config = _config()
    workdir = tmp_path_factory.mktemp("replicas") / "point"
    return config, workdir, train_replicas(config, workdir, REPLICAS)


@pytest.mark.parametrize("index", [1, 2])  # seed 1 at the first lr, seed 0 at the second
def test_each_replica_equals_its_separate_run(trained, tmp_path, index):
    config, workdir, results = trained
    replica = REPLICAS[index]
    separate = train_and_evaluate(
        _with(config, seed=replica.seed, lr=replica.lr), tmp_path / "alone"
    )
    for vmapped, alone in zip(
        _params(workdir / "checkpoints", index), _params(tmp_path / "alone" / "checkpoints"),
        strict=True,
    ):  # fmt: skip
        np.testing.assert_allclose(vmapped, alone, rtol=1e-5, atol=1e-6)
    result = results[index]
    assert result.status == "ok" and result.steps == 12
    assert result.eval_loss == pytest.approx(separate.eval_loss, rel=1e-5)
    assert result.accuracy == pytest.approx(separate.eval_accuracy, abs=1e-6)
    assert result.final_loss == pytest.approx(separate.train_loss, rel=1e-5)
    # head telemetry: the vmapped probe gives each replica its separate run's scores
    assert result.best_induction == pytest.approx(separate.induction_max, rel=1e-4)
    assert result.phase_change_step == separate.phase_change_step
    ours = read_metrics(workdir / "replicas" / replica.name)
    theirs = read_metrics(tmp_path / "alone")
    key = "telemetry/induction/L0H1"
    assert [r["step"] for r in ours if key in r] == [r["step"] for r in theirs if key in r]
    np.testing.assert_allclose(
        [r[key] for r in ours if key in r], [r[key] for r in theirs if key in r], rtol=1e-4
    )


def test_replicas_differ_and_share_data_by_seed(trained):
    config, workdir, results = trained
    params = [_params(workdir / "checkpoints", i) for i in range(4)]
    for a in range(4):
        for b in range(a + 1, 4):
            assert not all(np.array_equal(x, y) for x, y in zip(params[a], params[b], strict=True))
    first = read_metrics(workdir / "replicas" / REPLICAS[0].name)
    assert [r["step"] for r in first if "loss" in r] == [3, 6, 9, 12]
    assert {"val/accuracy", "eval/accuracy", "perf/compile_s"} <= set(first[-1])
    # validation and test are different held-out streams
    assert all(r.val_loss != r.eval_loss for r in results)


def test_a_killed_run_resumes_to_bit_identical_parameters(trained, tmp_path):
    config, workdir, results = trained
    run = shutil.copytree(workdir, tmp_path / "copy")
    shutil.rmtree(run / "checkpoints" / "12")  # killed after step 6's checkpoint
    (run / "result.json").unlink()
    resumed = train_replicas(config, run, REPLICAS)
    for i in range(4):
        for a, b in zip(
            _params(run / "checkpoints", i), _params(workdir / "checkpoints", i), strict=True
        ):
            assert np.array_equal(a, b)
        assert resumed[i].eval_loss == results[i].eval_loss
    records = read_metrics(run / "replicas" / REPLICAS[3].name)
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == [3, 6, 9, 12]  # each step logged once
    probed = [r["step"] for r in records if "telemetry/induction_max" in r]
    assert probed == sorted(set(probed)) and probed[0] == 0 and probed[-1] == 12
    assert (run / "telemetry.png").stat().st_size > 1000


def test_a_finished_point_started_again_keeps_its_result(trained):
    config, workdir, results = trained
    before = (workdir / "result.json").read_text()
    again = train_replicas(config, workdir, REPLICAS)
    assert (workdir / "result.json").read_text() == before
    assert [r.to_dict() for r in again] == [r.to_dict() for r in results]


def test_other_replicas_in_the_workdir_are_refused(trained):
    config, workdir, _ = trained
    with pytest.raises(ValueError, match="workdir"):
        train_replicas(config, workdir, REPLICAS[:2])


def test_a_diverging_replica_is_recorded_and_the_others_go_on(trained, tmp_path):
    config, workdir, _ = trained
    replicas = [REPLICAS[0], Replica(0, 1e38)]
    results = train_replicas(config, tmp_path / "point", replicas)
    good, bad = results
    assert bad.status == "nan" and bad.diverged_step is not None and bad.steps < 12
    assert "not finite" in bad.reason
    assert good.status == "ok" and good.steps == 12 and good.diverged_step is None
    for a, b in zip(
        _params(tmp_path / "point" / "checkpoints", 0), _params(workdir / "checkpoints", 0),
        strict=True,
    ):  # fmt: skip
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    frozen = _params(tmp_path / "point" / "checkpoints", 1)
    assert all(np.isfinite(leaf).all() for leaf in frozen)  # its last finite parameters
    stored = json.loads((tmp_path / "point" / "result.json").read_text())  # strict JSON
    assert stored["replicas"][1]["status"] == "nan"


def test_early_stop_freezes_each_replica_and_ends_when_all_are(tmp_path):
    config = _config()
    replicas = [Replica(0, 3e-3), Replica(1, 3e-3)]
    results = train_replicas(config, tmp_path / "p", replicas, early_stop_accuracy=1e-9)
    assert [r.stopped_step for r in results] == [6, 6]
    assert [r.steps for r in results] == [6, 6]
    saved = load_checkpoint(tmp_path / "p" / "checkpoints")
    assert list(np.asarray(saved["train"]["step"])) == [6, 6]
    assert list(np.asarray(saved["stopped_at"])) == [6, 6]
    again = train_replicas(config, tmp_path / "p", replicas, early_stop_accuracy=1e-9)
    assert [r.accuracy for r in again] == [r.accuracy for r in results]


@pytest.mark.parametrize(
    "seeds, rates, needle",
    [
        (0, (), "sweep.seeds"),
        (2.5, (), "sweep.seeds"),
        (1, (1e-3, 1e-3), "repeated"),
        (1, (-1e-3,), "sweep.learning_rates"),
        (1, ("fast",), "sweep.learning_rates"),
        (1, (float("inf"),), "sweep.learning_rates"),
    ],
)
def test_bad_replica_settings_name_the_field(seeds, rates, needle):
    with pytest.raises(ValueError, match=needle):
        replicas_for(seeds, rates, _config().train)


@pytest.mark.parametrize("value", [1.5, -0.1, "high"])
def test_bad_early_stop_accuracy_names_the_field_and_writes_nothing(tmp_path, value):
    with pytest.raises(ValueError, match="early_stop_accuracy"):
        train_replicas(_config(), tmp_path / "p", REPLICAS[:1], early_stop_accuracy=value)
    assert not (tmp_path / "p").exists()


def test_replicas_for_orders_learning_rate_by_learning_rate():
    train = _config().train
    assert replicas_for(2, (), train) == [Replica(0, train.lr), Replica(1, train.lr)]
    assert [(r.seed, r.lr) for r in replicas_for(2, (1e-3, 1e-2), train)] == [
        (0, 1e-3), (1, 1e-3), (0, 1e-2), (1, 1e-2)
    ]  # fmt: skip


_ON_8_DEVICES = """
import json, sys
import jax
from attnjax.training.replicas import Replica, train_replicas
from configs import train as train_config
config = train_config.get_config("tiny")
config.train.update(steps=6, checkpoint_every=3, log_every=3, eval_every=3)
config.mesh.data = 4
replicas = [Replica(s, lr) for lr in (3e-3, 1e-2) for s in (0, 1)]
try:
    train_replicas(config, sys.argv[2], replicas[:3])
    error = ""
except ValueError as e:
    error = str(e)
results = train_replicas(config, sys.argv[1], replicas)
print(json.dumps({"error": error, "eval_loss": [r.eval_loss for r in results],
                  "devices": jax.device_count()}))
"""


def test_the_replica_axis_splits_over_data_devices_and_matches_one(tmp_path):
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    done = subprocess.run(
        [sys.executable, "-c", _ON_8_DEVICES, str(tmp_path / "on8"), str(tmp_path / "bad")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["devices"] == 8
    assert "3 replicas" in report["error"] and "mesh.data=4" in report["error"]
    assert not (tmp_path / "bad").exists()
    config = train_config.get_config("tiny")
    config.train.update(steps=6, checkpoint_every=3, log_every=3, eval_every=3)
    config.mesh.data = 1
    replicas = [Replica(s, lr) for lr in (3e-3, 1e-2) for s in (0, 1)]
    on1 = train_replicas(config, tmp_path / "on1", replicas)
    np.testing.assert_allclose([r.eval_loss for r in on1], report["eval_loss"], rtol=1e-5)
    for i in range(4):
        for a, b in zip(
            _params(tmp_path / "on1" / "checkpoints", i),
            _params(tmp_path / "on8" / "checkpoints", i),
            strict=True,
        ):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_dropout_masks_follow_each_replicas_seed(tmp_path):
    config = _config(steps=6, checkpoint_every=6, eval_every=6)
    config.model.update(dropout_rate=0.2, attention_dropout_rate=0.1)
    results = train_replicas(config, tmp_path / "v", [Replica(0, 3e-3), Replica(1, 3e-3)])
    alone = train_and_evaluate(_with(config, seed=1), tmp_path / "alone")
    assert results[1].eval_loss == pytest.approx(alone.eval_loss, rel=1e-5)
    for a, b in zip(
        _params(tmp_path / "v" / "checkpoints", 1), _params(tmp_path / "alone" / "checkpoints"),
        strict=True,
    ):  # fmt: skip
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_load_trained_model_picks_one_replica_of_a_point(trained):
    from flax import nnx

    from attnjax.training.checkpoint import load_trained_model

    _, workdir, _ = trained
    model, config = load_trained_model(workdir, replica=2)
    assert (config["train"]["seed"], config["train"]["lr"]) == (0, 1e-2)
    loaded = jax.tree.leaves(nnx.state(model, nnx.Param))
    for a, b in zip(loaded, _params(workdir / "checkpoints", 2), strict=True):
        assert np.array_equal(np.asarray(a), b)
    with pytest.raises(ValueError, match="replica=7"):
        load_trained_model(workdir, replica=7)
