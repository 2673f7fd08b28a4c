"""Attention speed: each attnjax implementation against ``jax.nn.dot_product_attention``.

    uv run python -m experiments.benchmark
    uv run python -m experiments.benchmark --batch=4 --length=1024 --heads=8 --head_dim=64

Times forward+backward of causal self-attention, jitted, after a warm-up call, as the median
of ``--repeats`` runs, and prints each time as a ratio to ``jax.nn.dot_product_attention``
measured in the same run (absolute times on shared machines are noisy; ratios are what to
compare). Also prints the memory of the [B, N, T, S] float32 attention grid.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
from absl import flags

import attnjax
from experiments.common import log_devices, run

_BATCH = flags.DEFINE_integer("batch", 4, "B")
_LENGTH = flags.DEFINE_integer("length", 512, "T = S")
_HEADS = flags.DEFINE_integer("heads", 8, "N query heads")
_KV_HEADS = flags.DEFINE_integer("kv_heads", None, "K key/value heads (default N)")
_HEAD_DIM = flags.DEFINE_integer("head_dim", 64, "H")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed runs per implementation")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "input dtype")
_IMPLS = flags.DEFINE_list("implementations", ["vmap", "einsum", "xla"], "attnjax implementations")


def fwd_bwd(attention_fn):
    def loss(q, k, v):
        return attention_fn(q, k, v).astype(jnp.float32).sum()

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def median_seconds(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_benchmark(batch, length, heads, kv_heads, head_dim, repeats, dtype, implementations):
    kv_heads = heads if kv_heads is None else kv_heads
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (batch, length, heads, head_dim), dtype)
    k = jax.random.normal(keys[1], (batch, length, kv_heads, head_dim), dtype)
    v = jax.random.normal(keys[2], (batch, length, kv_heads, head_dim), dtype)
    peer = median_seconds(
        fwd_bwd(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True)),
        (q, k, v),
        repeats,
    )
    rows = [("jax.nn.dot_product_attention", peer, 1.0)]
    for impl in implementations:
        seconds = median_seconds(
            fwd_bwd(
                lambda q, k, v, impl=impl: attnjax.dot_product_attention(
                    q, k, v, is_causal=True, implementation=impl
                )
            ),
            (q, k, v),
            repeats,
        )
        rows.append((f"attnjax[{impl}]", seconds, seconds / peer))
    return rows


def main(argv):
    del argv
    log_devices()
    b, t, n, h = _BATCH.value, _LENGTH.value, _HEADS.value, _HEAD_DIM.value
    rows = run_benchmark(
        b, t, n, _KV_HEADS.value, h, _REPEATS.value, jnp.dtype(_DTYPE.value), _IMPLS.value
    )
    grid_mib = b * n * t * t * 4 / 2**20
    print(
        f"causal attention fwd+bwd, B={b} T=S={t} N={n} K={_KV_HEADS.value or n} H={h} "
        f"{_DTYPE.value} on {jax.default_backend()}; attention grid {grid_mib:.0f} MiB/layer"
    )
    print(f"{'implementation':32s} {'median ms':>10s} {'vs jax.nn':>10s}")
    for name, seconds, ratio in rows:
        print(f"{name:32s} {seconds * 1e3:10.1f} {ratio:10.2f}x")


if __name__ == "__main__":
    run(main)
