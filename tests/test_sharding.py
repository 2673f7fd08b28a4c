"""Sharding: the path rules, and a sharded step on 8 simulated CPU devices equal to 1 device."""

import os
import subprocess
import sys
import textwrap

import pytest
from jax.sharding import PartitionSpec as P

from attnjax.training.sharding import partition_spec


@pytest.mark.parametrize(
    "path, shape, spec",
    [
        ("blocks/0/attention/query", (16, 4, 4), P(None, "model", None)),
        ("blocks/3/attention/key", (16, 4, 4), P(None, "model", None)),
        ("blocks/0/attention/value_down", (16, 4, 4), P(None, "model", None)),
        ("blocks/0/attention/value_up", (4, 4, 16), P("model", None, None)),
        ("blocks/0/attention/query_bias", (4, 4), P("model", None)),
        ("blocks/0/attention/output_bias", (16,), P()),
        ("blocks/0/mlp/up/kernel", (16, 64), P(None, "model")),
        ("blocks/0/mlp/up/bias", (64,), P("model")),
        ("blocks/0/mlp/down/kernel", (64, 16), P("model", None)),
        ("blocks/0/mlp/down/bias", (16,), P()),
        ("embeddings/token/embedding", (32, 16), P()),
        ("opt_state/0/mu/blocks/1/attention/value_up", (4, 4, 16), P("model", None, None)),
        ("blocks/0/attention/key", (16, 2, 4), P()),  # 2 kv heads do not split 4 ways
    ],
)
def test_partition_rules(path, shape, spec):
    assert partition_spec(path, shape, model_size=4) == spec


SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    assert jax.device_count() == 8, jax.devices()
    from attnjax.data import make_task
    from attnjax.models import ModelConfig
    from attnjax.training import sharding
    from attnjax.training.state import init_model, init_train_state, make_optimizer
    from attnjax.training.step import make_train_step

    config = ModelConfig(vocab_size=16, max_seq_len=11, model_dim=16, num_layers=2,
                         num_heads=4, mlp_dim=32)
    task = make_task("induction", seq_len=11, vocab_size=16, prefix_len=6, min_prefix_len=3)
    tx = make_optimizer(learning_rate=1e-2, steps=3, warmup_steps=1, weight_decay=0.1,
                        clip_norm=1.0)

    def run(data, model):
        mesh = sharding.make_mesh(data, model)
        split = init_model(config, seed=0)
        state = init_train_state(split.params, tx)
        shardings = sharding.state_shardings(state, mesh)
        state = jax.device_put(state, shardings)
        step = make_train_step(split.graphdef, split.rest, tx, state_sharding=shardings)
        losses = []
        for i in range(3):
            state, metrics = step(state, sharding.shard_batch(task.batch(i, 8), mesh))
            losses.append(float(metrics["loss"]))
        return state, losses

    single, single_losses = run(1, 1)
    sharded, sharded_losses = run(2, 4)
    query = sharded.params["blocks"][0]["attention"]["query"][...]
    assert len(query.sharding.device_set) == 8, query.sharding
    assert query.addressable_shards[0].data.shape == (16, 1, 4), query.addressable_shards[0]
    np.testing.assert_allclose(single_losses, sharded_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    print("OK", single_losses)
    """
)


@pytest.mark.slow
def test_sharded_step_equals_single_device_step():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout


@pytest.mark.parametrize("data, model", [(-1, 2), (2, 1), (1, 3)])
def test_mesh_larger_than_the_devices_says_what_was_asked_and_what_exists(data, model):
    import jax

    from attnjax.training.sharding import make_mesh

    with pytest.raises(ValueError, match=rf"mesh\.model={model} .*only 1 exist"):
        make_mesh(data, model, devices=jax.devices()[:1])


@pytest.mark.parametrize(
    "path, shape, model, fsdp, stacked, spec",
    [
        # fsdp on the largest axis model leaves free (ZeRO-3)
        ("blocks/0/attention/query", (16, 4, 4), 4, 2, 0, P("fsdp", "model", None)),
        ("blocks/0/attention/value_up", (4, 4, 16), 2, 4, 0, P("model", None, "fsdp")),
        ("blocks/0/mlp/up/kernel", (16, 64), 1, 8, 0, P("fsdp", "model")),
        ("blocks/0/mlp/down/kernel", (64, 16), 4, 8, 0, P("model", "fsdp")),
        ("embeddings/token/embedding", (32, 16), 4, 8, 0, P("fsdp", None)),
        ("blocks/0/mlp/down/bias", (16,), 1, 8, 0, P("fsdp")),
        ("opt_state/0/mu/blocks/0/mlp/up/kernel", (16, 64), 4, 2, 0, P("fsdp", "model")),
        # an axis fsdp does not divide is skipped; no axis: replicated
        ("embeddings/token/embedding", (30, 16), 1, 4, 0, P(None, "fsdp")),
        ("blocks/0/norm/scale", (6,), 1, 4, 0, P()),
        ("step", (), 1, 8, 0, P()),
        # a stacked layer axis L: the model rule applies after it; fsdp avoids it
        ("blocks/attention/query", (96, 16, 4, 4), 4, 2, 1, P(None, "fsdp", "model", None)),
        ("blocks/norm/scale", (8, 6), 1, 4, 1, P("fsdp", None)),
    ],
)
def test_partition_rules_with_fsdp(path, shape, model, fsdp, stacked, spec):
    assert partition_spec(path, shape, model, fsdp, stacked=stacked) == spec


FSDP_SCRIPT = textwrap.dedent(
    """
    import json, jax, numpy as np
    assert jax.device_count() == 8, jax.devices()
    from attnjax.data import make_task
    from attnjax.models import ModelConfig
    from attnjax.training import sharding
    from attnjax.training.state import init_model, init_train_state, make_optimizer
    from attnjax.training.step import make_train_step

    config = ModelConfig(vocab_size=16, max_seq_len=11, model_dim=16, num_layers=2,
                         num_heads=4, mlp_dim=32)
    task = make_task("induction", seq_len=11, vocab_size=16, prefix_len=6, min_prefix_len=3)
    tx = make_optimizer(learning_rate=1e-2, steps=2, warmup_steps=1, weight_decay=0.1,
                        clip_norm=1.0)
    split = init_model(config, seed=0)
    host_state = jax.device_get(init_train_state(split.params, tx))  # numpy: never donated

    def per_device_bytes(state):
        return sum(s.data.nbytes for x in jax.tree.leaves(state) for s in x.addressable_shards
                   if s.device == jax.devices()[0])

    def run(data, fsdp, model, steps):
        mesh = sharding.make_mesh(data, model, fsdp=fsdp)
        shardings = sharding.state_shardings(host_state, mesh)
        state = jax.device_put(host_state, shardings)
        placed = per_device_bytes(state)
        step = make_train_step(split.graphdef, split.rest, tx, state_sharding=shardings)
        losses = []
        for i in range(steps):
            state, metrics = step(state, sharding.shard_batch(task.batch(i, 8), mesh))
            losses.append(float(metrics["loss"]))
        assert per_device_bytes(state) == placed  # the step keeps the state's layout
        return state, losses, placed

    single, single_losses, _ = run(1, 1, 1, 2)
    result = {"bytes": {}}
    for data, fsdp, model in ((2, 2, 2),):  # all three axes in one program
        state, losses, _ = run(data, fsdp, model, 2)
        np.testing.assert_allclose(single_losses, losses, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(state), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
        up = state.params["blocks"][0]["mlp"]["up"]["kernel"][...]
        shard = up.addressable_shards[0].data.shape
        result[f"{data},{fsdp},{model}"] = [list(up.sharding.spec), shard]
    for fsdp in (1, 2, 4, 8):
        mesh = sharding.make_mesh(8 // fsdp, 1, fsdp=fsdp)
        state = jax.device_put(host_state, sharding.state_shardings(host_state, mesh))
        result["bytes"][fsdp] = per_device_bytes(state)
    result["total"] = sum(x.nbytes for x in jax.tree.leaves(host_state))
    print(json.dumps(result))
    """
)


@pytest.mark.slow
def test_fsdp_step_equals_single_device_and_shrinks_per_device_state():
    import json

    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    result = subprocess.run(
        [sys.executable, "-c", FSDP_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    # mlp/up/kernel [D=16, F=32]: F over model, D over fsdp
    assert got["2,2,2"] == [["fsdp", "model"], [8, 16]]
    per_device = [got["bytes"][str(f)] for f in (1, 2, 4, 8)]
    assert per_device[0] == got["total"]  # fsdp=1: every device holds everything
    assert per_device[1] < per_device[0] and per_device[2] < per_device[1]
    assert per_device[3] < per_device[2]
    # nearly all of it splits: only scalars and leaves no fsdp size divides stay whole
    assert per_device[3] < got["total"] / 8 * 1.1, per_device


def test_configs_without_mesh_fsdp_still_run_and_resume(tmp_path):
    import json

    import jax
    import ml_collections

    from attnjax.training import run_config
    from attnjax.training.sharding import mesh_from_config
    from configs import train

    old = ml_collections.ConfigDict(dict(data=-1, model=1))  # a config from before the axis
    mesh = mesh_from_config(old, jax.devices()[:1])
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "model": 1}
    config = train.get_config("tiny")
    assert config.mesh.fsdp == 1
    recorded = config.to_dict()
    del recorded["mesh"]["fsdp"]  # the config.json of a run made before the axis
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    run_config.check_same_config(tmp_path, config.to_dict())  # resumes: no ValueError
