"""Head telemetry: the probe against the planted circuit and the detectors, the ICL score
against NumPy, vmap over replicas, the phase-change step, and the loop's wiring (records at
the right steps, result.json, resume logging each probe once, bad settings named)."""

import json
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from attnjax.analysis import detect_heads, planted_induction_model
from attnjax.models import ModelConfig
from attnjax.training.loop import RunResult, train_and_evaluate
from attnjax.training.metrics import read_metrics
from attnjax.training.state import init_model
from attnjax.training.telemetry import (
    check_probeable,
    icl_windows,
    make_probe,
    phase_change_step,
    probe_batch,
    telemetry_scalars,
)
from configs import train as train_config

TINY = ModelConfig(vocab_size=16, max_seq_len=12, model_dim=16, num_layers=2, num_heads=2)


@pytest.fixture(scope="module")
def planted():
    """The hand-set induction circuit (vocabulary 64: few repeats inside a random half, so
    the planted head's prefix-matching score is near 1), split for the probe."""
    circuit = planted_induction_model(vocab_size=64, max_seq_len=16)
    circuit.model.eval()
    graphdef, params, rest = nnx.split(circuit.model, nnx.Param, ...)
    probe = make_probe(graphdef, rest, circuit.model.config, seed=3, batch=8)
    return circuit, jax.jit(probe)(params)


def test_probe_finds_the_planted_heads_and_agrees_with_the_detectors(planted):
    circuit, out = planted
    induction, previous = np.asarray(out["induction"]), np.asarray(out["previous_token"])
    assert induction.shape == previous.shape == (2, 2)
    assert np.unravel_index(induction.argmax(), induction.shape) == circuit.induction
    assert np.unravel_index(previous.argmax(), previous.shape) == circuit.previous_token
    assert induction[circuit.induction] > 0.9 and previous[circuit.previous_token] > 0.99
    # n = min(16 // 2, 32) = 8: the detectors on the same tokens, through their own pass
    detectors = detect_heads(circuit.model, seq_len=8, batch=8, seed=3)
    np.testing.assert_allclose(induction, detectors.induction, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(previous, detectors.previous_token, rtol=1e-5, atol=1e-6)
    assert float(out["icl"]) < -5.0  # the repeated half is predicted, the random half is not


def test_icl_score_is_late_minus_early_loss_in_numpy(planted):
    circuit, out = planted
    tokens = np.asarray(probe_batch(64, 16, seed=3, batch=8))
    assert tokens.shape == (8, 16) and (tokens[:, :8] == tokens[:, 8:]).all()
    logits = np.asarray(circuit.model(jnp.asarray(tokens)), np.float64)[:, :-1]
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    loss = -np.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]  # [B, 2n - 1]
    early, late = icl_windows(8)
    assert list(early) == [0, 1, 2, 3] and list(late) == [11, 12, 13, 14]
    expected = loss[:, list(late)].mean() - loss[:, list(early)].mean()
    np.testing.assert_allclose(float(out["icl"]), expected, rtol=1e-4)


def test_vmapped_probe_equals_separate_calls():
    splits = [init_model(TINY, seed) for seed in range(3)]
    probe = make_probe(splits[0].eval_graphdef, splits[0].rest, TINY, batch=4)
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[s.params for s in splits])
    together = jax.jit(jax.vmap(probe))(stacked)
    assert together["induction"].shape == (3, 2, 2) and together["icl"].shape == (3,)
    for replica, split in enumerate(splits):
        alone = jax.jit(probe)(split.params)
        for name, value in alone.items():
            np.testing.assert_allclose(together[name][replica], value, rtol=1e-5, atol=1e-6)


def test_scalars_are_flat_names_per_head():
    out = {
        "induction": np.array([[0.1, 0.7], [0.2, 0.3]]),
        "previous_token": np.array([[0.9, 0.0], [0.1, 0.2]]),
        "icl": np.float32(-1.5),
    }
    scalars = telemetry_scalars(out)
    assert scalars["telemetry/induction_max"] == pytest.approx(0.7)
    assert scalars["telemetry/previous_token_max"] == pytest.approx(0.9)
    assert scalars["telemetry/icl"] == pytest.approx(-1.5)
    assert scalars["telemetry/induction/L0H1"] == pytest.approx(0.7)
    assert scalars["telemetry/previous_token/L1H0"] == pytest.approx(0.1)
    assert len(scalars) == 3 + 2 * 4 and all(isinstance(v, float) for v in scalars.values())


def _records(values, key="telemetry/induction_max"):
    return [{"step": 10 * i, key: v} for i, v in enumerate(values)]


@pytest.mark.parametrize(
    "values, expected",
    [
        ([0.06, 0.08, 0.2, 0.5, 0.9], 30),  # crosses
        ([0.06, 0.08, 0.1, 0.2], None),  # never does
        ([0.06, 0.35, 0.1, 0.2, 0.8], 10),  # crosses, dips, crosses again: the first
        ([0.06, "nan", 0.3], 20),  # non-finite values (stored as strings) are passed over
    ],
)
def test_phase_change_step_on_synthetic_records(values, expected):
    records = _records(values) + [{"step": 5, "loss": 1.0}]  # other records are ignored
    assert phase_change_step(records, threshold=0.3) == expected


def test_phase_change_step_reads_any_key_and_the_threshold():
    records = _records([0.1, 0.2, 0.3], key="telemetry/induction/L1H0")
    assert phase_change_step(records, threshold=0.15, key="telemetry/induction/L1H0") == 10
    assert phase_change_step(records, threshold=0.15) is None  # default key absent


def _tiny_config(**train):
    config = train_config.get_config("tiny")
    config.train.update(
        **{"steps": 12, "checkpoint_every": 10, "log_every": 4, "eval_every": 6,
           "telemetry_every": 5, **train}
    )  # fmt: skip
    return config


def _telemetry_steps(workdir):
    return [r["step"] for r in read_metrics(workdir) if "telemetry/induction_max" in r]


@pytest.fixture(scope="module")
def telemetry_run(tmp_path_factory):
    """A tiny run probed at 0, 5, 10 and 12, with a threshold its random-init heads already
    pass (0.05 < mean 1/(t+1) = 0.094 at n = 7), so the phase change is at step 0."""
    config = _tiny_config(phase_change_threshold=0.05)
    workdir = tmp_path_factory.mktemp("telemetry") / "run"
    return config, workdir, train_and_evaluate(config, workdir)


def test_run_logs_telemetry_at_its_steps_and_reports_the_phase_change(telemetry_run):
    config, workdir, result = telemetry_run
    assert _telemetry_steps(workdir) == [0, 5, 10, 12]
    record = next(r for r in read_metrics(workdir) if r["step"] == 12 and "telemetry/icl" in r)
    assert {"telemetry/induction/L0H1", "telemetry/previous_token/L0H0"} <= set(record)
    stored = json.loads((workdir / "result.json").read_text())
    assert stored["phase_change_step"] == result.phase_change_step == 0
    assert stored["induction_max"] == pytest.approx(record["telemetry/induction_max"])
    assert (workdir / "telemetry.png").stat().st_size > 0
    assert phase_change_step(read_metrics(workdir), threshold=1.0) is None  # none reaches 1


@pytest.mark.parametrize("lose_step_10", [False, True])
def test_resume_logs_each_telemetry_step_once(telemetry_run, tmp_path, lose_step_10):
    config, workdir, result = telemetry_run
    run = shutil.copytree(workdir, tmp_path / "copy")
    shutil.rmtree(run / "checkpoints" / "12")  # killed after step 10's checkpoint
    (run / "result.json").unlink()
    if lose_step_10:  # killed after the checkpoint, before step 10's probe was logged
        kept = [r for r in read_metrics(run) if not (r["step"] == 10 and "telemetry/icl" in r)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    resumed = train_and_evaluate(config, run)
    assert _telemetry_steps(run) == [0, 5, 10, 12]
    assert resumed.eval_loss == result.eval_loss
    assert resumed.phase_change_step == 0
    assert resumed.induction_max == pytest.approx(result.induction_max, rel=1e-6)


def test_run_without_telemetry_reports_none(tmp_path):
    result = train_and_evaluate(_tiny_config(steps=4, telemetry_every=0), tmp_path / "run")
    assert result.phase_change_step is None and result.induction_max is None
    assert _telemetry_steps(tmp_path / "run") == []
    assert not (tmp_path / "run" / "telemetry.png").exists()


def test_result_json_without_the_telemetry_fields_still_loads():
    old = dict(
        workdir="w", steps=1, train_loss=1.0, eval_loss=1.0, eval_accuracy=0.5,
        eval_sequence_accuracy=0.1, tokens_per_s=1.0, compile_s=0.1, wall_s=0.2, params={},
    )  # fmt: skip
    result = RunResult(**old)
    assert result.phase_change_step is None and result.induction_max is None


@pytest.mark.parametrize(
    "train, field",
    [
        (dict(telemetry_every=-1), "train.telemetry_every"),
        (dict(telemetry_every=2.5), "train.telemetry_every"),
        (dict(phase_change_threshold=0.0), "train.phase_change_threshold"),
        (dict(phase_change_threshold=1.5), "train.phase_change_threshold"),
    ],
)
def test_bad_telemetry_settings_name_the_field(tmp_path, train, field):
    description = _tiny_config().to_dict()
    description["train"].update(train)
    config = ml_collections.ConfigDict(description)  # values of any type
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    "model, says",
    [
        (ModelConfig(vocab_size=8, max_seq_len=3, model_dim=16, num_heads=2), "max_seq_len >= 4"),
        (
            ModelConfig(
                vocab_size=8, max_seq_len=8, model_dim=16, num_heads=2, architecture="encoder"
            ),
            "causal decoder",
        ),
    ],
)
def test_a_model_the_probe_cannot_run_on_is_refused_naming_the_field(model, says):
    with pytest.raises(ValueError, match=rf"train\.telemetry_every.*{says}"):
        check_probeable(model)
    with pytest.raises(ValueError, match=r"train\.telemetry_every"):
        split = init_model(TINY, 0)  # the config is checked before anything is built
        make_probe(split.eval_graphdef, split.rest, model)


def test_figure_draws_a_line_per_run_and_marks_the_phase_change(tmp_path):
    from attnjax.viz.telemetry import save_telemetry_plot, telemetry_figure

    def run(scores):
        return [
            {"step": 10 * i, "telemetry/induction_max": s, "telemetry/previous_token_max": 0.1,
             "telemetry/icl": -s, "loss": 3.0 - s}
            for i, s in enumerate(scores)
        ]  # fmt: skip

    runs = {"1 layer": run([0.06, 0.07, 0.08]), "2 layers": run([0.06, 0.1, 0.8])}
    fig = telemetry_figure(runs, threshold=0.5)
    induction = fig.axes[0]
    assert [line.get_label() for line in induction.get_lines()[:1]] == ["1 layer (none)"]
    labels = [line.get_label() for line in induction.get_lines()]
    assert "2 layers (phase change at 20)" in labels
    marks = [line for line in fig.axes[3].get_lines() if list(line.get_xdata()) == [20, 20]]
    assert len(marks) == 1  # the 2-layer run's phase change, on the loss panel too
    path = save_telemetry_plot(runs, tmp_path / "out" / "telemetry.png")
    assert path.read_bytes()[:4] == b"\x89PNG" and not list(path.parent.glob(".*.tmp"))
