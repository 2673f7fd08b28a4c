"""Training: masked metrics vs NumPy, optimizer, step, checkpoints, metrics files, the loop,
and the sweep's bookkeeping (failures recorded, reruns skip, shards merge)."""

import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from attnjax.data import make_task
from attnjax.models import ModelConfig
from attnjax.training import sweep as sweep_lib
from attnjax.training.checkpoint import Checkpointer, load_checkpoint
from attnjax.training.loop import RunResult, train_and_evaluate
from attnjax.training.metrics import MetricsWriter, read_metrics
from attnjax.training.state import init_model, init_train_state, make_optimizer
from attnjax.training.step import make_eval_step, make_train_step, masked_metrics
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


def _fake_result(config, workdir):
    """Stands in for training: fails like a real run would for 3 heads, NaN for 8."""
    heads = config.model.num_heads
    ModelConfig.from_config(config.model)  # raises for heads that do not divide model_dim
    if heads == 8:
        raise FloatingPointError("loss is nan at step 3")
    workdir.mkdir(parents=True, exist_ok=True)
    return RunResult(
        str(workdir), 1, 1.0, 1.0 / heads, 0.5, 0.1, 100.0, 0.1, 0.2,
        {"params/total": 1000 * heads, "params/attention": 10 * heads, "params/per_head": 10},
    )  # fmt: skip


def test_sweep_records_failures_skips_finished_points_and_merges_shards(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        sweep_lib, "train_and_evaluate", lambda c, w: calls.append(w.name) or _fake_result(c, w)
    )
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
    rows = sweep_lib.run_sweep(config, tmp_path, echo=lambda _: None)
    assert calls[2:] == ["h3_l1"]
    failed = {r["heads"]: r for r in rows}[3]
    assert failed["status"] == "failed" and "num_heads=3" in failed["reason"]
    csv_text = (tmp_path / "results.csv").read_text().splitlines()
    assert csv_text[0].startswith("heads,layers,") and len(csv_text) == 4
    # rerunning the whole sweep skips everything already finished
    config.sweep.shard = "0/1"
    sweep_lib.run_sweep(config, tmp_path, echo=lambda _: None)
    assert len(calls) == 3
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
    point = sweep_lib.point_config(config, sweep_lib.SweepPoint(heads=8, layers=2))
    model = ModelConfig.from_config(point.model)
    assert model.resolved_head_dim == config.sweep.head_dim and model.num_heads == 8
    assert model.model_dim == config.model.model_dim and model.num_layers == 2
