"""Attention under a mesh of 8 simulated CPU devices: kernels XLA cannot partition run per
shard (no all-gather of q, k, v; the output keeps the inputs' sharding), and values and
gradients equal one device's."""

import json
import os
import subprocess
import sys

import pytest

_SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import attnjax

results = {}
for name, (data, model, kv_heads) in {
    "data": (8, 1, 4), "data_model_gqa": (4, 2, 2), "model_mqa": (2, 4, 1),
}.items():
    mesh = jax.make_mesh((data, model), ("data", "model"))
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (8, 96, 4, 16))
    k, v = (jax.random.normal(kk, (8, 96, kv_heads, 16)) for kk in keys[1:3])
    lengths = jnp.array([96, 50, 96, 70, 96, 96, 10, 96])
    spec = NamedSharding(mesh, P("data", None, "model", None))
    spec_kv = spec if kv_heads % model == 0 else NamedSharding(mesh, P("data", None, None, None))

    def loss(q, k, v):
        out = attnjax.dot_product_attention(
            q, k, v, is_causal=True, key_value_seq_lengths=lengths, implementation="blocked",
            block_sizes=(32, 32),
        )
        return (out * jnp.sin(out)).sum(), out

    loss_and_grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
    step = jax.jit(loss_and_grads)
    args = jax.device_put(q, spec), jax.device_put(k, spec_kv), jax.device_put(v, spec_kv)
    text = step.lower(*args).compile().as_text()
    (_, out), grads = step(*args)
    (_, want), want_grads = jax.jit(loss_and_grads)(q, k, v)
    results[name] = dict(
        all_gathers=text.count("all-gather("),
        out_spec=str(out.sharding.spec),
        out_shard_bytes=out.addressable_shards[0].data.nbytes,
        out_bytes=out.nbytes,
        out_diff=float(jnp.abs(out - want).max()),
        grad_diff=max(float(jnp.abs(a - b).max()) for a, b in zip(grads, want_grads)),
    )
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def results():
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
    }
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["data", "data_model_gqa", "model_mqa"])
def test_blocked_runs_per_shard_without_gathering_its_inputs(results, case):
    got = results[case]
    assert got["all_gathers"] == 0
    heads = "None" if case == "data" else "'model'"
    assert got["out_spec"] == f"P('data', None, {heads}, None)"
    assert got["out_shard_bytes"] == got["out_bytes"] // 8
    assert got["out_diff"] < 2e-5 and got["grad_diff"] < 5e-5
