"""Training: masked metrics vs NumPy, optimizer, step, checkpoints, metrics files, the loop,
and the sweep's bookkeeping (failures recorded, reruns skip, shards merge)."""

import dataclasses
import json
import math
import pathlib
import re
import shutil
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from attnjax.data import make_task
from attnjax.models import ModelConfig, point_config
from attnjax.training import sweep as sweep_lib
from attnjax.training.checkpoint import Checkpointer, load_checkpoint
from attnjax.training.loop import train_and_evaluate
from attnjax.training.metrics import MetricsWriter, read_metrics
from attnjax.training.state import init_model, init_train_state, make_optimizer
from attnjax.training.step import make_eval_step, make_train_step, masked_metrics, pool_metrics
from configs import sweep as sweep_config
from configs import train as train_config

TINY_MODEL = ModelConfig(vocab_size=16, max_seq_len=11, model_dim=16, num_layers=1, num_heads=2)


def _tiny_task():
    return make_task("induction", seq_len=11, vocab_size=16, prefix_len=6, min_prefix_len=3)


def test_masked_metrics_match_float64_numpy(key):
    k1, k2, k3 = jax.random.split(key, 3)
    logits = jax.random.normal(k1, (3, 5, 7)) * 3
    targets = jax.random.randint(k2, (3, 5), 0, 7)
    mask = (jax.random.uniform(k3, (3, 5)) > 0.4).astype(jnp.float32).at[2].set(0.0)
    got = masked_metrics(logits, targets, mask)

    lg, tg, mk = (np.asarray(a, np.float64) for a in (logits, targets, mask))
    logp = (
        lg
        - np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - lg.max(-1, keepdims=True)
    )
    nll = -np.take_along_axis(logp, tg.astype(int)[..., None], -1)[..., 0]
    right = (lg.argmax(-1) == tg) * mk
    rows = mk.sum(1) > 0
    np.testing.assert_allclose(got["loss"], (nll * mk).sum() / mk.sum(), rtol=1e-5)
    np.testing.assert_allclose(got["accuracy"], right.sum() / mk.sum(), rtol=1e-6)
    seq_right = [(right[b] == mk[b]).all() for b in range(3) if rows[b]]
    np.testing.assert_allclose(got["sequence_accuracy"], np.mean(seq_right), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(learning_rate=0.0), "train.lr"),
        (dict(warmup_steps=10, steps=10), "train.warmup"),
        (dict(clip_norm=0.0), "train.clip"),
    ],
)
def test_optimizer_rejects_bad_settings(kwargs, field):
    settings = dict(learning_rate=1e-3, steps=10, warmup_steps=1, weight_decay=0.1, clip_norm=1.0)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        make_optimizer(**{**settings, **kwargs})


@pytest.fixture(scope="module")
def tiny_training():
    """A tiny model split once, its optimizer and its compiled train step (shared: compiling
    is most of the cost)."""
    split = init_model(TINY_MODEL, seed=0)
    tx = make_optimizer(
        learning_rate=1e-2, steps=30, warmup_steps=2, weight_decay=0.0, clip_norm=1.0
    )
    return split, tx, make_train_step(split.graphdef, split.rest, tx)


def test_train_step_learns_and_eval_agrees(tiny_training):
    split, tx, step = tiny_training
    state = init_train_state(jax.tree.map(jnp.copy, split.params), tx)  # steps donate it
    evaluate = make_eval_step(split.eval_graphdef, split.rest)
    batch = _tiny_task().batch(0, 16)
    before = evaluate(state.params, batch)
    losses = []
    for _ in range(30):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 30
    np.testing.assert_allclose(losses[0], before["loss"], rtol=1e-5)  # same params, same batch
    assert losses[-1] < 0.7 * losses[0]  # memorizes the fixed batch


def test_checkpoint_round_trip(tmp_path, tiny_training):
    split, tx, step = tiny_training
    params = jax.tree.map(jnp.copy, split.params)  # the step donates its input
    state = step(init_train_state(params, tx), _tiny_task().batch(0, 16))[0]
    checkpointer = Checkpointer(tmp_path / "ckpt", every=1, keep=1)
    assert checkpointer.restore_latest("untouched") == "untouched"
    checkpointer.maybe_save(1, state)
    checkpointer.close()
    fresh = init_train_state(init_model(TINY_MODEL, seed=2).params, tx)
    restored = Checkpointer(tmp_path / "ckpt", every=1, keep=1).restore_latest(fresh)
    assert int(restored.step) == 1
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(a, b)
    raw = load_checkpoint(tmp_path / "ckpt")
    np.testing.assert_array_equal(
        raw["params"]["blocks"]["0"]["attention"]["query"]["value"],
        state.params["blocks"][0]["attention"]["query"][...],
    )


def test_metrics_writer_drops_steps_after_the_resume_point(tmp_path):
    with MetricsWriter(tmp_path) as writer:
        for step in (0, 5, 10, 15):
            writer.write(step, {"loss": np.float32(1.0 / (step + 1)), "bad": float("nan")})
    with MetricsWriter(tmp_path, resume_step=10) as writer:
        writer.write(15, {"loss": 0.5})
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [0, 5, 10, 15]
    assert records[-1]["loss"] == 0.5 and records[0]["bad"] == "nan"
    assert list((tmp_path / "tensorboard").iterdir())


def _tiny_config(**train):
    config = train_config.get_config("tiny")
    config.train.update(train)
    return config


def test_train_and_evaluate_writes_everything_and_loss_falls(tmp_path):
    config = _tiny_config(steps=30, lr=1e-2)
    result = train_and_evaluate(config, tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "result.json"):
        assert (run / name).is_file()
    assert json.loads((run / "config.json").read_text())["model"]["num_heads"] == 2
    assert list((run / "tensorboard").iterdir())
    assert (run / "checkpoints" / "30").is_dir()
    records = read_metrics(run)
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0]
    assert math.isfinite(result.eval_loss) and 0 <= result.eval_accuracy <= 1
    assert result.steps == 30 and result.tokens_per_s > 0 and result.compile_s > 0
    from attnjax.accounting import count_params

    expected = count_params(ModelConfig.from_config(config.model)).scalars()
    assert records[0]["step"] == 0
    for name in ("params/total", "params/attention", "params/per_head"):
        assert records[0][name] == expected[name] == result.params[name]
    # a finished run started again does no more steps and reports the same evaluation
    again = train_and_evaluate(config, run)
    assert again.steps == 30 and again.eval_loss == pytest.approx(result.eval_loss)


def test_train_rejects_a_model_that_does_not_fit_the_task(tmp_path):
    config = ml_collections.ConfigDict(_tiny_config().to_dict())  # model no longer follows task
    config.model.vocab_size = 4
    with pytest.raises(ValueError, match=r"model\.vocab_size"):
        train_and_evaluate(config, tmp_path)


def _fake_result(config, workdir, replicas, **options):
    """Stands in for training: fails like a real run would for 3 heads, diverges for 8."""
    heads = config.model.num_heads
    ModelConfig.from_config(config.model)  # raises for heads that do not divide model_dim
    workdir.mkdir(parents=True, exist_ok=True)
    return [fake_replica_result(r, heads) for r in replicas]


def fake_replica_result(replica, heads: int):
    """A ``ReplicaResult`` whose accuracy is ``1 / heads`` (status nan for 8 heads)."""
    from attnjax.training.replicas import ReplicaResult

    diverged = heads == 8
    return ReplicaResult(
        name=replica.name, seed=replica.seed, lr=replica.lr,
        status="nan" if diverged else "ok", reason="loss is nan at step 3" if diverged else "",
        steps=1, diverged_step=3 if diverged else None, stopped_step=None, final_loss=1.0,
        val_loss=0.6, val_accuracy=0.4, val_sequence_accuracy=0.1, eval_loss=0.5,
        accuracy=1.0 / heads, sequence_accuracy=0.1, phase_change_step=None,
        best_induction=None, tokens_per_s=100.0, compile_s=0.1, wall_s=0.2,
        params={"params/total": 1000 * heads, "params/attention": 10 * heads,
                "params/per_head": 10},
    )  # fmt: skip


def _count_fake_training(monkeypatch) -> list[str]:
    """Fake every point's training; the list fills with the names of the points trained."""
    calls = []
    monkeypatch.setattr(
        sweep_lib,
        "train_replicas",
        lambda c, w, r, **o: calls.append(w.name) or _fake_result(c, w, r),
    )
    return calls


def test_sweep_records_failures_skips_finished_points_and_merges_shards(tmp_path, monkeypatch):
    calls = _count_fake_training(monkeypatch)
    config = sweep_config.get_config("tiny")
    config.sweep.heads = (1, 3, 8)
    config.sweep.layers = (1,)
    config.sweep.shard = "0/2"
    rows = sweep_lib.run_sweep(config, tmp_path, echo=lambda _: None)
    assert calls == ["h1_l1", "h8_l1"]  # points 0 and 2
    by_heads = {r["heads"]: r for r in rows}
    assert by_heads[1]["status"] == "ok" and by_heads[1]["params_total"] == 1000
    assert by_heads[8]["status"] == "nan" and "nan" in by_heads[8]["reason"]
    assert by_heads[3]["status"] == "missing"
    config.sweep.shard = "1/2"
    config.mesh.data = 1  # another machine's mesh: the same sweep
    rows = sweep_lib.run_sweep(config, tmp_path, echo=lambda _: None)
    assert calls[2:] == []  # h3_l1 (this shard's point) fails building its model, untrained
    failed = {r["heads"]: r for r in rows}[3]
    assert failed["status"] == "failed" and "num_heads=3" in failed["reason"]
    csv_text = (tmp_path / "results.csv").read_text().splitlines()
    assert csv_text[0].startswith("heads,layers,") and len(csv_text) == 4
    # rerunning the whole sweep skips everything already finished
    config.sweep.shard = "0/1"
    sweep_lib.run_sweep(config, tmp_path, echo=lambda _: None)
    assert len(calls) == 2
    assert "failures:" in sweep_lib.format_results(rows)
    # a different sweep in the same workdir is refused
    config.train.steps = 99
    with pytest.raises(ValueError, match="workdir"):
        sweep_lib.run_sweep(config, tmp_path, echo=lambda _: None)


@pytest.mark.parametrize("shard", ["1/1", "a/b", "3", "-1/2"])
def test_bad_shard_names_the_field(shard):
    with pytest.raises(ValueError, match=r"sweep\.shard"):
        sweep_lib.parse_shard(shard)


def test_fixed_head_dim_points_keep_head_width():
    config = sweep_config.get_config("fixed_head_dim")
    point = sweep_lib.point_run_config(config, sweep_lib.SweepPoint(heads=8, layers=2))
    model = ModelConfig.from_config(point.model)
    assert model.resolved_head_dim == config.sweep.head_dim and model.num_heads == 8
    assert model.model_dim == config.model.model_dim and model.num_layers == 2


@pytest.mark.parametrize("variant", ["fixed_model_dim", "fixed_head_dim"])
def test_count_sweep_and_train_sweep_describe_the_same_models(variant):
    """The same grid, counted and trained: identical models at every point, and the counts of
    the count sweep are those of the models the train sweep builds."""
    from attnjax import accounting

    config = sweep_config.get_config(variant)
    sweep = config.sweep
    base = ModelConfig.from_config(config.model)
    rows = accounting.count_sweep(
        base, sweep.heads, sweep.layers, sweep.fixed, head_dim=sweep.head_dim
    )
    counted = {(r["heads"], r["layers"]): r for r in rows}
    for point in sweep_lib.sweep_points(config):
        trained = ModelConfig.from_config(sweep_lib.point_run_config(config, point).model)
        row = counted[(point.heads, point.layers)]
        assert (trained.num_heads, trained.num_layers) == (point.heads, point.layers)
        assert trained == point_config(base, point.heads, point.layers, sweep.fixed, sweep.head_dim)
        report = accounting.count_params(trained)
        head_dim = 16 if sweep.fixed == "head_dim" else 64 // point.heads
        assert (row["model_dim"], row["head_dim"]) == (64, head_dim)
        assert (row["total"], row["attention"]) == (report.total, report.attention)
        # written out by hand: D = 64 always; 4 maps of [64, N*H] per layer
        attention_width = point.heads * row["head_dim"]
        assert row["attention"] == point.layers * 4 * 64 * attention_width


def test_default_sweep_points_change_only_heads_and_layers():
    """The README's sweep table was trained with run configs that differ from the base only in
    num_heads and num_layers; the shared point rule must keep them so."""
    config = sweep_config.get_config()
    for point in sweep_lib.sweep_points(config):
        model = sweep_lib.point_run_config(config, point).model.to_dict()
        expected = {**config.model.to_dict(), "num_heads": point.heads, "num_layers": point.layers}
        assert model == expected


def test_masked_metrics_with_nothing_masked_are_zero_and_say_so(key):
    k1, k2, k3 = jax.random.split(key, 3)
    logits = jax.random.normal(k1, (2, 6, 9)) * 3
    targets = jax.random.randint(k2, (2, 6), 0, 9)
    metrics = jax.jit(masked_metrics)
    empty = metrics(logits, targets, jnp.zeros((2, 6)))
    assert {k: float(v) for k, v in empty.items()} == dict(
        loss=0.0, accuracy=0.0, sequence_accuracy=0.0, count=0.0, sequences=0.0
    )
    mask = (jax.random.uniform(k3, (2, 6)) > 0.5).astype(jnp.float32).at[1].set(0.0)
    assert float(metrics(logits, targets, mask)["count"]) == float(mask.sum())
    assert float(metrics(logits, targets, mask)["sequences"]) == 1.0


def test_pooled_metrics_of_batches_are_the_metrics_of_all_their_answers(key):
    k1, k2, k3 = jax.random.split(key, 3)
    logits = jax.random.normal(k1, (6, 5, 9)) * 3
    targets = jax.random.randint(k2, (6, 5), 0, 9)
    mask = (jax.random.uniform(k3, (6, 5)) > 0.6).astype(jnp.float32).at[3].set(0.0)
    metrics = jax.jit(masked_metrics)
    parts = [slice(0, 2), slice(2, 4), slice(4, 6)]
    per_batch = [metrics(logits[p], targets[p], mask[p]) for p in parts]
    assert len({float(m["count"]) for m in per_batch}) > 1  # batches with different weights
    pooled, whole = pool_metrics(per_batch), metrics(logits, targets, mask)
    assert pooled.keys() == whole.keys()
    for name, value in whole.items():
        np.testing.assert_allclose(pooled[name], value, rtol=1e-6, err_msg=name)
    empty = metrics(logits[:2], targets[:2], jnp.zeros((2, 5)))
    assert pool_metrics([empty, empty]) == dict(
        loss=0.0, accuracy=0.0, sequence_accuracy=0.0, count=0.0, sequences=0.0
    )


def test_compiled_steps_carry_no_token_check_but_a_plain_forward_does(tiny_training):
    from flax import nnx

    from attnjax.models import DecoderLM

    split, tx, step = tiny_training
    batch = _tiny_task().batch(0, 4)
    state = init_train_state(split.params, tx)
    assert "callback" not in step.lower(state, batch).as_text()
    evaluate = make_eval_step(split.eval_graphdef, split.rest)
    assert "callback" not in evaluate.lower(split.params, batch).as_text()
    model = DecoderLM(TINY_MODEL, rngs=nnx.Rngs(0))
    forward = nnx.jit(lambda model, tokens: model(tokens))
    assert "callback" in forward.lower(model, batch.inputs).as_text()  # the check is there


def test_weight_decay_skips_biases_and_norm_scales():
    from flax import nnx

    from attnjax.models import DecoderLM
    from attnjax.training.sharding import path_string
    from attnjax.training.state import decays

    config = dataclasses.replace(TINY_MODEL, attention_bias=True)
    shapes = nnx.state(nnx.eval_shape(lambda: DecoderLM(config, rngs=nnx.Rngs(0))), nnx.Param)
    rng = np.random.default_rng(7)  # random values everywhere, biases too (they start at 0)
    params = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), shapes)
    tx = make_optimizer(
        learning_rate=0.1, steps=10, warmup_steps=0, weight_decay=0.5, clip_norm=1.0
    )
    zero_grads = jax.tree.map(jnp.zeros_like, params)  # so only the decay moves a parameter
    updates, _ = jax.jit(tx.update)(zero_grads, tx.init(params), params)
    moved = jax.tree_util.tree_leaves_with_path(jax.tree.map(lambda u: bool(jnp.any(u)), updates))
    by_path = {path_string(path): flag for path, flag in moved}
    assert by_path["blocks/0/attention/query_bias"] is False
    assert by_path["blocks/0/attention/query"] is True
    assert by_path["embeddings/token/embedding"] is True
    assert by_path["final_norm/scale"] is False and by_path["blocks/0/mlp/up/bias"] is False
    assert all(flag == decays(path) for path, flag in by_path.items())


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny run trained to the end once: ``(config, workdir, result)``; copy before changing."""
    config = _tiny_config(steps=12, checkpoint_every=10, log_every=4, eval_every=6)
    workdir = tmp_path_factory.mktemp("finished") / "run"
    return config, workdir, train_and_evaluate(config, workdir)


def _copy(workdir, tmp_path):
    return shutil.copytree(workdir, tmp_path / "copy")


def _strict_json(path):
    def refuse(constant):
        raise ValueError(f"{constant} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_finished_run_started_again_keeps_its_result(finished_run):
    config, workdir, result = finished_run
    before = (workdir / "result.json").read_text()
    again = train_and_evaluate(config, workdir)
    assert (workdir / "result.json").read_text() == before
    assert again == result and math.isfinite(again.train_loss) and again.tokens_per_s > 0


def test_run_killed_before_result_json_rebuilds_it_from_the_records(finished_run, tmp_path):
    config, workdir, result = finished_run
    run = _copy(workdir, tmp_path)
    (run / "result.json").unlink()  # killed after the last checkpoint, before result.json
    rebuilt = train_and_evaluate(config, run)
    assert rebuilt.train_loss == pytest.approx(result.train_loss)
    assert rebuilt.tokens_per_s == pytest.approx(result.tokens_per_s)
    assert rebuilt.eval_loss == pytest.approx(result.eval_loss)
    stored = _strict_json(run / "result.json")  # no NaN: unknown values are null
    assert stored["train_loss"] == pytest.approx(result.train_loss) and stored["wall_s"] is None


def test_run_killed_before_its_first_checkpoint_logs_each_step_once(finished_run, tmp_path):
    config, workdir, _ = finished_run
    run = _copy(workdir, tmp_path)
    shutil.rmtree(run / "checkpoints")  # its records stay, as after a kill before step 10
    (run / "result.json").unlink()
    train_and_evaluate(config, run)
    records = read_metrics(run)
    for key in ("loss", "params/total", "eval/loss"):
        steps = [r["step"] for r in records if key in r]
        assert steps == sorted(set(steps)), (key, steps)
    assert [r["step"] for r in records if "loss" in r] == [4, 8, 12]


def _damage(step_dir, how):
    """Damage one checkpoint the ways a disk, a kill mid-copy or a person do."""
    if how == "truncated data file":
        for path in step_dir.rglob("*"):
            if path.is_file() and path.parent.name == "d":  # OCDBT data files
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "no default/":
        shutil.rmtree(step_dir / "default")
    else:
        (step_dir / "default" / "_METADATA").unlink()


@pytest.mark.parametrize("how", ["truncated data file", "no default/"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(
    finished_run, tmp_path, how, caplog
):
    config, workdir, result = finished_run
    run = _copy(workdir, tmp_path)
    (run / "result.json").unlink()  # as if killed after step 12's checkpoint was damaged
    _damage(run / "checkpoints" / "12", how)
    resumed = train_and_evaluate(config, run)  # from step 10, with a warning naming step 12
    assert resumed.steps == 12 and resumed.eval_loss == pytest.approx(result.eval_loss, rel=1e-6)
    assert f"{run / 'checkpoints' / '12'} cannot be read" in caplog.text
    assert (run / "checkpoints_damaged" / "12").is_dir()  # kept for a look, out of the way
    saved = load_checkpoint(run / "checkpoints")
    reference = load_checkpoint(workdir / "checkpoints")
    assert int(saved["step"]) == 12
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(reference), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("how", ["truncated data file", "no default/", "no _METADATA"])
def test_load_checkpoint_passes_over_a_damaged_one_and_names_it(
    finished_run, tmp_path, how, caplog
):
    _, workdir, _ = finished_run
    run = _copy(workdir, tmp_path)
    _damage(run / "checkpoints" / "12", how)
    assert int(load_checkpoint(run / "checkpoints")["step"]) == 10
    assert f"{run / 'checkpoints' / '12'} cannot be read" in caplog.text
    with pytest.raises(ValueError, match=re.escape(str(run / "checkpoints" / "12"))):
        load_checkpoint(run / "checkpoints", step=12)


_ON_8_DEVICES = """
import json, sys
from configs import train as train_config
from attnjax.training.loop import train_and_evaluate
config = train_config.get_config("tiny")
config.train.update(steps=8, checkpoint_every=4, keep=2, log_every=4, eval_every=4)
config.mesh.model = 2  # a 4 x 2 mesh: parameters split over heads, batch over 4 devices
result = train_and_evaluate(config, sys.argv[1])
config.train.batch_size = 6  # not divisible by the data axis: refused before writing
try:
    train_and_evaluate(config, sys.argv[2])
    error = None
except ValueError as e:
    error = str(e)
print(json.dumps(dict(eval_loss=result.eval_loss, error=error)))
"""


@pytest.mark.slow
def test_checkpoint_of_8_devices_restores_in_a_process_with_1(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    written = tmp_path / "on8"
    done = subprocess.run(
        [sys.executable, "-c", _ON_8_DEVICES, str(written), str(tmp_path / "bad")],
        cwd=pathlib.Path(__file__).resolve().parent.parent, env=env, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert "train.batch_size=6 must be divisible" in report["error"]
    assert "mesh.data=-1: 4 devices" in report["error"]
    assert not (tmp_path / "bad").exists()
    assert jax.device_count() == 1
    on8 = load_checkpoint(written / "checkpoints")  # inspect on a laptop: no template needed
    assert int(on8["step"]) == 8
    run = _copy(written, tmp_path)  # resume from step 4 here, on 1 device
    shutil.rmtree(run / "checkpoints" / "8")
    (run / "result.json").unlink()
    config = _tiny_config(steps=8, checkpoint_every=4, keep=2, log_every=4, eval_every=4)
    resumed = train_and_evaluate(config, run)
    assert resumed.eval_loss == pytest.approx(report["eval_loss"], rel=1e-5)
    on1 = load_checkpoint(run / "checkpoints")
    for a, b in zip(jax.tree.leaves(on1), jax.tree.leaves(on8), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "change, key", [(dict(model_dim=32), "model.model_dim"), (dict(lr=0.01), "train.lr")]
)
def test_workdir_of_another_config_is_refused_before_it_changes(finished_run, change, key):
    config, workdir, _ = finished_run
    other = ml_collections.ConfigDict(config.to_dict())
    for name, value in change.items():
        (other.model if name in other.model else other.train)[name] = value
    before = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match="workdir=.*" + re.escape(key)):
        train_and_evaluate(other, workdir)
    assert {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()} == before


@pytest.mark.parametrize(
    "train, field",
    [
        (dict(lr=-1.0), r"train\.lr"),
        (dict(lr=float("nan")), r"train\.lr"),
        (dict(clip=-1.0), r"train\.clip"),
        (dict(warmup=50), r"train\.warmup=50 must be in \[0, train\.steps=20\)"),
        (dict(warmup=-1), r"train\.warmup"),
        (dict(weight_decay=-0.1), r"train\.weight_decay"),
        (dict(checkpoint_every=0), r"train\.checkpoint_every"),
        (dict(keep=0), r"train\.keep"),
    ],
)
def test_a_rejected_run_writes_nothing(tmp_path, train, field):
    with pytest.raises(ValueError, match=field):
        train_and_evaluate(_tiny_config(**train), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_corrected_command_runs_in_the_workdir_of_a_rejected_one(tmp_path):
    (tmp_path / "run").mkdir()  # e.g. made by an earlier, finished step of a script
    with pytest.raises(ValueError, match=r"train\.lr"):
        train_and_evaluate(_tiny_config(lr=-1.0, steps=3), tmp_path / "run")
    assert list((tmp_path / "run").iterdir()) == []
    result = train_and_evaluate(_tiny_config(steps=3), tmp_path / "run")
    assert result.steps == 3 and math.isfinite(result.eval_loss)


@pytest.mark.parametrize("seed", [-1, True])
def test_bad_seed_names_the_field(tmp_path, seed):
    with pytest.raises(ValueError, match=r"train\.seed"):
        train_and_evaluate(_tiny_config(seed=seed), tmp_path)


def test_resume_with_other_logging_and_checkpointing_is_accepted(finished_run, tmp_path):
    config, workdir, result = finished_run
    run = _copy(workdir, tmp_path)
    shutil.rmtree(run / "checkpoints" / "12")  # killed after step 10's checkpoint
    (run / "result.json").unlink()
    other = ml_collections.ConfigDict(config.to_dict())
    other.train.update(log_every=1, eval_every=5, checkpoint_every=3, keep=1)
    other.mesh.data = 1
    resumed = train_and_evaluate(other, run)
    assert resumed.steps == 12 and resumed.eval_loss == pytest.approx(result.eval_loss, rel=1e-6)
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == [4, 8, 11, 12]
    assert json.loads((run / "config.json").read_text())["train"]["log_every"] == 1


@pytest.mark.parametrize(
    "override, field",
    [
        (dict(task=dict(prefix_len=20)), r"task\.prefix_len"),
        (dict(sweep=dict(head_dim=0)), r"sweep\.head_dim"),
        (dict(model=dict(model_dim=15), sweep=dict(heads=(2, 4))), r"model_dim=15"),
        (dict(train=dict(lr=-1.0)), r"train\.lr"),
        (dict(train=dict(keep=0)), r"train\.keep"),
        (dict(train=dict(checkpoint_every=0)), r"train\.checkpoint_every"),
    ],
)
def test_sweep_no_point_can_run_is_refused_before_writing(tmp_path, monkeypatch, override, field):
    monkeypatch.setattr(sweep_lib, "train_replicas", _fake_result)
    config = sweep_config.get_config("tiny")
    for section, values in override.items():
        config[section].update(values)
    with pytest.raises(ValueError, match=field):
        sweep_lib.run_sweep(config, tmp_path / "sweep", echo=lambda _: None)
    assert not (tmp_path / "sweep").exists()


def test_default_sweep_workdirs_differ_by_config_and_not_by_shard(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTNJAX_RUNS", str(tmp_path))
    main, tiny = sweep_config.get_config(), sweep_config.get_config("tiny")
    changed = sweep_config.get_config()
    changed.train.steps = 10
    sharded = sweep_config.get_config()
    sharded.sweep.shard, sharded.sweep.retry_failed = "1/4", True
    sharded.mesh.data, sharded.train.log_every = 2, 7
    paths = [sweep_lib.default_workdir(c) for c in (main, tiny, changed)]
    assert len(set(paths)) == 3 and all(p.parent == tmp_path for p in paths)
    assert sweep_lib.default_workdir(sharded) == paths[0]
    assert sweep_lib.default_workdir(sweep_config.get_config()) == paths[0]


def test_failed_point_at_fixed_head_dim_records_that_head_dim(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_lib, "train_replicas", _fake_result)
    config = sweep_config.get_config("tiny")
    config.sweep.update(fixed="head_dim", head_dim=4, heads=(1, 8), layers=(1,))
    rows = {r["heads"]: r for r in sweep_lib.run_sweep(config, tmp_path, echo=lambda _: None)}
    assert rows[8]["status"] == "nan" and rows[8]["head_dim"] == 4
    assert rows[1]["head_dim"] == 4


def test_merge_lists_the_points_of_the_sweep_in_the_workdir(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_lib, "train_replicas", _fake_result)
    config = sweep_config.get_config("tiny")
    config.sweep.update(heads=(1, 3, 8), layers=(1,), shard="0/2")
    sweep_lib.run_sweep(config, tmp_path, echo=lambda _: None)
    points = sweep_lib.recorded_points(tmp_path)
    assert [p.name for p in points] == ["h1_l1", "h3_l1", "h8_l1"]
    rows = sweep_lib.merge_results(tmp_path, points)
    assert [(r["heads"], r["status"]) for r in rows] == [(1, "ok"), (3, "missing"), (8, "nan")]
    with pytest.raises(ValueError, match="workdir="):
        sweep_lib.merge_results(tmp_path / "nonexistent")


def test_sweep_checks_build_the_task_once(tmp_path, monkeypatch):
    from attnjax.training import loop, run_config

    built = []
    build = run_config.build_task
    counting = lambda config, **kw: built.append(kw) or build(config, **kw)
    monkeypatch.setattr(run_config, "build_task", counting)
    monkeypatch.setattr(loop, "build_task", counting)
    monkeypatch.setattr(sweep_lib, "build_task", counting)
    monkeypatch.setattr(sweep_lib, "train_replicas", _fake_result)
    config = sweep_config.get_config("tiny")
    sweep_lib.run_sweep(config, tmp_path, echo=lambda _: None)
    assert len(sweep_lib.sweep_points(config)) == 4 and len(built) == 1


@pytest.mark.parametrize(
    "sweep, field",
    [
        (dict(heads=(1, True)), r"sweep\.heads=\[1, True\] must be"),
        (dict(layers=(1.0,)), r"sweep\.layers=\[1\.0\] must be"),
        (dict(layers=()), r"sweep\.layers=\[\] must be"),
        (dict(head_dim=True), r"sweep\.head_dim must be a positive int, got True"),
    ],
)
def test_sweep_grid_must_be_ints(sweep, field):
    config = sweep_config.get_config("tiny")
    config.sweep.update(sweep)
    with pytest.raises(ValueError, match=field):
        sweep_lib.sweep_points(config)


def test_sweep_grid_takes_numpy_ints():
    config = ml_collections.ConfigDict(sweep_config.get_config("tiny").to_dict())
    config.sweep.heads = (np.int64(2),)
    points = sweep_lib.sweep_points(config)
    assert [p.name for p in points] == ["h2_l1", "h2_l2"] and type(points[0].heads) is int


def test_two_sweeps_on_one_workdir_at_once_run_each_point_once(tmp_path, monkeypatch):
    calls = []

    def slow_fake(config, workdir, replicas, **options):  # long enough for the other to get here
        calls.append(workdir.name)
        time.sleep(0.5)
        return _fake_result(config, workdir, replicas)

    monkeypatch.setattr(sweep_lib, "train_replicas", slow_fake)
    config = sweep_config.get_config("tiny")
    config.sweep.update(heads=(1, 2, 4), layers=(1,))
    start, errors, said = threading.Barrier(2), [], []

    def sweep():
        start.wait()
        try:
            sweep_lib.run_sweep(config, tmp_path, echo=said.append)
        except Exception as error:  # noqa: BLE001 - reported by the assert below
            errors.append(error)

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and sorted(calls) == ["h1_l1", "h2_l1", "h4_l1"], (errors, calls)
    assert sum("another process" in line or "skipped" in line for line in said) == 3, said
    rows = sweep_lib.run_sweep(config, tmp_path, echo=lambda _: None)  # nothing left to run
    assert [r["status"] for r in rows] == ["ok"] * 3 and len(calls) == 3


def test_a_point_claimed_elsewhere_is_left_alone_and_not_recorded(tmp_path, monkeypatch):
    from attnjax.training.files import claim

    calls = _count_fake_training(monkeypatch)
    config = sweep_config.get_config("tiny")
    config.sweep.update(heads=(1, 2), layers=(1,))
    with claim(tmp_path / "h1_l1") as mine:  # as another process running h1_l1 holds it
        assert mine
        rows = {r["heads"]: r for r in sweep_lib.run_sweep(config, tmp_path, echo=print)}
    assert calls == ["h2_l1"] and rows[1]["status"] == "missing"
    assert not (tmp_path / "h1_l1" / "row.json").exists()
    sweep_lib.run_sweep(config, tmp_path, echo=print)  # the claim is free again
    assert calls == ["h2_l1", "h1_l1"]


def test_workdir_probes_of_concurrent_runs_do_not_collide(tmp_path):
    from attnjax.training.loop import prepare_workdir

    errors = []

    def probe():
        for _ in range(200):
            try:
                prepare_workdir(tmp_path)
            except OSError as error:
                errors.append(error)

    threads = [threading.Thread(target=probe) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and list(tmp_path.iterdir()) == []


def test_a_write_that_fails_midway_leaves_the_old_file(tmp_path, monkeypatch):
    from attnjax.training import files

    path = tmp_path / "row.json"
    files.atomic_write_text(path, '{"old": 1}')

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        files.atomic_write_text(path, '{"new": 2}')
    assert path.read_text() == '{"old": 1}' and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_damaged_row_and_result_json_are_rebuilt_or_named(tmp_path, monkeypatch, caplog):
    from attnjax.training import files

    replaced = []
    replace = files.os.replace
    monkeypatch.setattr(files.os, "replace", lambda a, b: replaced.append(b) or replace(a, b))
    config = sweep_config.get_config("tiny")
    config.sweep.update(heads=(2,), layers=(1,))
    config.train.update(steps=4, warmup=1, checkpoint_every=4, log_every=2, eval_every=4)
    [row] = sweep_lib.run_sweep(config, tmp_path, echo=lambda _: None)
    written = {pathlib.Path(p).name for p in replaced}
    assert {"row.json", "result.json", "results.csv", "config.json"} <= written
    assert row["status"] == "ok" and not list(tmp_path.rglob("*.tmp"))
    point = tmp_path / "h2_l1"
    truncate = lambda path: path.write_text(path.read_text()[: path.stat().st_size // 2])
    truncate(point / "row.json")  # killed mid-write by an older version, or a full disk
    assert sweep_lib.merge_results(tmp_path) == [row]  # rebuilt from result.json, no training
    assert f"{point / 'row.json'} was damaged" in caplog.text
    rebuilt = json.loads((point / "row.json").read_text())
    assert rebuilt["status"] == "ok" and len(rebuilt["replicas"]) == config.sweep.seeds
    truncate(point / "row.json")
    truncate(point / "result.json")
    with pytest.raises(ValueError, match=re.escape(str(point / "row.json"))):
        sweep_lib.merge_results(tmp_path)
    [again] = sweep_lib.run_sweep(config, tmp_path, echo=lambda _: None)  # from the checkpoint
    assert again["status"] == "ok" and again["eval_loss"] == pytest.approx(row["eval_loss"])
    stored = _strict_json(point / "result.json")["replicas"]
    mean = sum(r["eval_loss"] for r in stored) / len(stored)
    assert mean == pytest.approx(row["eval_loss"])


def test_sweep_variants_and_learning_rates_reach_every_point_and_table(tmp_path, monkeypatch):
    seen = {}

    def fake(config, workdir, replicas, **options):
        runs = [(r.seed, r.lr) for r in replicas]
        seen[workdir.name] = (
            config.model.model_dim,
            config.task.seq_len,
            config.model.max_seq_len,
            runs,
        )
        return _fake_result(config, workdir, replicas)

    monkeypatch.setattr(sweep_lib, "train_replicas", fake)
    config = sweep_config.get_config("tiny")
    config.sweep.update(
        heads=(1,), layers=(1,), seeds=2, learning_rates=(1e-3, 3e-3),
        variants=({"name": "wide", "model.model_dim": 32, "task.seq_len": 13},
                  {"model.model_dim": 16}),
    )  # fmt: skip
    cells = sweep_lib.run_sweep(config, tmp_path, echo=lambda _: None)
    assert seen == {
        "h1_l1_wide": (32, 13, 13, [(0, 1e-3), (1, 1e-3), (0, 3e-3), (1, 3e-3)]),
        "h1_l1_model_dim16": (16, 11, 11, [(0, 1e-3), (1, 1e-3), (0, 3e-3), (1, 3e-3)]),
    }
    assert sorted(c["variant"] for c in cells) == ["model_dim16", "wide"]
    assert {c["model_dim"] for c in cells} == {16, 32} and all(c["seeds"] == 2 for c in cells)
    read = lambda name: (tmp_path / name).read_text().strip().splitlines()
    assert len(read("results.csv")) == 1 + 2
    assert len(read("results_by_lr.csv")) == 1 + 2 * 2
    assert len(read("replicas.csv")) == 1 + 2 * 4


@pytest.mark.parametrize(
    "variants, needle",
    [
        (({"model.modl_dim": 32},), r"'model.modl_dim' is not a field"),
        (({"sweep.heads": (2,)},), "may not change the sweep"),
        (({"name": "a", "model.model_dim": 32}, {"name": "a", "model.model_dim": 16}), "repeated"),
        (("wide",), r"sweep.variants\[0\] must be a non-empty dict"),
    ],
)
def test_bad_sweep_variants_name_the_field(variants, needle):
    config = sweep_config.get_config("tiny")
    config.sweep.variants = variants
    with pytest.raises(ValueError, match=needle):
        sweep_lib.sweep_points(config)
