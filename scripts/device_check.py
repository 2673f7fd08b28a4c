"""One prepared run on one NVIDIA GPU (an H200): are the GPU paths right, and how fast are they.

    python scripts/device_check.py --out="$OUT/device_check.json"     # on the GPU, < 8 minutes
    python scripts/device_check.py --smoke --out=/tmp/device_check.json  # CPU, tiny: does it run

(``--out`` defaults to ``$OUT/device_check.json``.) Three parts, results in one JSON file
written atomically (a temporary file, then ``os.replace``):

1. **Correctness.** ``implementation="cudnn"``, ``"blocked"``, ``"xla"`` and ``None`` in
   bfloat16 against the float32 reference (``"vmap"``) on the same inputs, values and the
   gradients of q, k, v, for: T != S, a causal sliding window, padding (query and key lengths)
   and grouped-query heads (every case uses N=8 query heads on K=2 key/value heads). An
   implementation that cannot run a case (cuDNN off a GPU) is recorded with its reason.
2. **Attention speed.** Causal forward+backward in bfloat16, B=4, T=4096, N=16, H=128
   (FlashAttention's benchmark shape): attnjax's ``None``, ``"cudnn"``, ``"blocked"`` against
   ``jax.nn.dot_product_attention(implementation="cudnn")`` (``"xla"`` off a GPU). FLOPs count
   the grid's two matmuls over the causal half, forward+backward = 3 x forward
   (``experiments/benchmark.py``'s convention).
3. **GPT-2 small train step** (124M, T=1024, B=16, bfloat16 compute, float32 parameters, AdamW):
   tokens/s and model FLOPs utilisation, ``attnjax.accounting.training_flops_per_token`` x
   tokens/s against the H200's dense bfloat16 peak, 989 TFLOP/s (NVIDIA H200 data sheet:
   "BF16 Tensor Core 1,979 TFLOPS" with 2:4 sparsity, half of it dense).

The exit status is 1 when a correctness check fails (the JSON is written either way).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import attnjax

H200_BF16_DENSE_FLOPS = 989e12
IMPLEMENTATIONS = ("cudnn", "blocked", "xla", None)
# bfloat16 against float32: max |error| over max |reference|.
TOLERANCE = {"out": 2e-2, "grads": 4e-2}


def _cases(smoke: bool) -> dict[str, dict]:
    t, s = (32, 48) if smoke else (256, 384)
    lengths = dict(
        query_seq_lengths=jnp.array([t, t // 2]), key_value_seq_lengths=jnp.array([s - 8, s // 3])
    )
    window = dict(is_causal=True, local_window_size=(t // 2, 0))
    return {
        "t_ne_s": dict(shape=(2, t, s), kwargs={}),
        "causal_window": dict(shape=(2, s, s), kwargs=window),
        "padding": dict(shape=(2, t, s), kwargs=lengths),
        "gqa_causal": dict(shape=(2, s, s), kwargs=dict(is_causal=True)),
    }


def _inputs(key, batch, q_len, k_len, heads=8, kv_heads=2, width=64):
    kq, kk, kv, kc = jax.random.split(key, 4)
    q = jax.random.normal(kq, (batch, q_len, heads, width))
    k = jax.random.normal(kk, (batch, k_len, kv_heads, width))
    v = jax.random.normal(kv, (batch, k_len, kv_heads, width))
    cotangent = jax.random.normal(kc, (batch, q_len, heads, width))
    return q, k, v, cotangent


def _out_and_grads(implementation, kwargs, dtype):
    def loss(q, k, v, cotangent):
        out = attnjax.dot_product_attention(q, k, v, implementation=implementation, **kwargs)
        return (out.astype(jnp.float32) * cotangent).sum(), out

    grad = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)

    @jax.jit
    def run(q, k, v, cotangent):
        q, k, v = (x.astype(dtype) for x in (q, k, v))
        grads, out = grad(q, k, v, cotangent)
        return out.astype(jnp.float32), [g.astype(jnp.float32) for g in grads]

    return run


def _relative_error(got, want) -> float:
    return float(jnp.abs(got - want).max() / jnp.maximum(jnp.abs(want).max(), 1e-6))


def check_correctness(smoke: bool) -> dict:
    results = {}
    cases = _cases(smoke)
    if smoke:  # compiles are the cost on a CPU: one case (T != S, padding, GQA)
        cases = {"padding": cases["padding"]}
    for index, (name, case) in enumerate(cases.items()):
        q, k, v, cotangent = _inputs(jax.random.key(index), *case["shape"])
        # The reference sees the bfloat16-rounded inputs, so only the computation differs.
        q, k, v = (x.astype(jnp.bfloat16).astype(jnp.float32) for x in (q, k, v))
        reference = _out_and_grads("vmap", case["kwargs"], jnp.float32)
        want_out, want_grads = reference(q, k, v, cotangent)
        for implementation in IMPLEMENTATIONS:
            row = results.setdefault(name, {})
            try:
                run = _out_and_grads(implementation, case["kwargs"], jnp.bfloat16)
                out, grads = run(q, k, v, cotangent)
            except (ValueError, NotImplementedError) as error:  # e.g. cudnn off a GPU
                row[str(implementation)] = dict(skipped=str(error)[:300])
                continue
            errors = dict(
                out=_relative_error(out, want_out),
                grads=max(_relative_error(g, w) for g, w in zip(grads, want_grads, strict=True)),
            )
            row[str(implementation)] = dict(
                **errors, ok=all(errors[key] <= TOLERANCE[key] for key in errors)
            )
    return results


def _time(fn, *args, repeats: int) -> float:
    """Median seconds of ``fn(*args)`` after one warm-up call (compiled ahead of it)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_attention(smoke: bool, on_gpu: bool) -> dict:
    batch, length, heads, width = (1, 128, 2, 32) if smoke else (4, 4096, 16, 128)
    keys = jax.random.split(jax.random.key(7), 3)
    q, k, v = (jax.random.normal(kk, (batch, length, heads, width), jnp.bfloat16) for kk in keys)
    flops = 3 * 4 * batch * heads * width * length * (length + 1) / 2
    peer = "cudnn" if on_gpu else "xla"
    candidates = {
        f"jax.nn[{peer}]": lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, is_causal=True, implementation=peer
        ),
    }
    for implementation in (None,) if smoke else (None, "cudnn", "blocked"):
        candidates[f"attnjax[{implementation or 'auto'}]"] = (
            lambda q, k, v, implementation=implementation: attnjax.dot_product_attention(
                q, k, v, is_causal=True, implementation=implementation
            )
        )
    results = dict(shape=dict(B=batch, T=length, N=heads, H=width), flops=flops)
    for name, attention in candidates.items():
        loss = lambda q, k, v, attention=attention: attention(q, k, v).astype(jnp.float32).sum()
        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
        try:
            seconds = _time(step, q, k, v, repeats=3 if smoke else 20)
        except (ValueError, NotImplementedError) as error:  # e.g. cudnn off a GPU
            results[name] = dict(skipped=str(error)[:300])
            continue
        results[name] = dict(ms=seconds * 1e3, tflops=flops / seconds / 1e12)
    return results


def time_gpt2_step(smoke: bool) -> dict:
    from attnjax.accounting import training_flops_per_token
    from attnjax.data.tasks import Batch
    from attnjax.training import init_model, init_train_state, make_optimizer, make_train_step

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # for configs/
    from configs import gpt2

    config = attnjax.ModelConfig.from_config(gpt2.get_config("small").model)
    batch_size, seq_len = 16, 1024
    if smoke:
        config = dataclasses.replace(
            config, vocab_size=256, max_seq_len=64, model_dim=64, num_layers=2, num_heads=2
        )
        batch_size, seq_len = 4, 64
    config = dataclasses.replace(config, dtype="bfloat16")
    split = init_model(config, seed=0)
    tx = make_optimizer(
        learning_rate=3e-4, steps=1000, warmup_steps=10, weight_decay=0.1, clip_norm=1.0
    )
    state = init_train_state(split.params, tx)
    step = make_train_step(split.graphdef, split.rest, tx)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (batch_size, seq_len + 1))
    batch = Batch(
        jnp.asarray(tokens[:, :-1], jnp.int32),
        jnp.asarray(tokens[:, 1:], jnp.int32),
        jnp.ones((batch_size, seq_len), jnp.float32),
    )
    state, metrics = step(state, batch)  # compile and warm up
    jax.block_until_ready(metrics)
    steps = 3 if smoke else 30
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    loss = float(metrics["loss"])
    seconds = (time.perf_counter() - start) / steps
    tokens_per_s = batch_size * seq_len / seconds
    model_flops = training_flops_per_token(config, seq_len) * tokens_per_s
    return dict(
        config=dict(layers=config.num_layers, width=config.model_dim, heads=config.num_heads),
        batch_size=batch_size, seq_len=seq_len, step_ms=seconds * 1e3, loss=loss,
        tokens_per_s=tokens_per_s, model_tflops=model_flops / 1e12,
        mfu_vs_h200_bf16_dense=model_flops / H200_BF16_DENSE_FLOPS,
    )  # fmt: skip


def write_json_atomically(path: pathlib.Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        json.dump(payload, f, indent=1, sort_keys=True)
    os.replace(f.name, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="JSON path (default $OUT/device_check.json)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: checks that it runs")
    args = parser.parse_args(argv)
    if args.out is None and not os.environ.get("OUT"):
        parser.error("--out is required when $OUT is not set")
    out = pathlib.Path(args.out or os.path.join(os.environ["OUT"], "device_check.json"))
    devices = jax.devices()
    on_gpu = devices[0].platform == "gpu"
    report = dict(devices=[d.device_kind for d in devices], jax=jax.__version__, smoke=args.smoke)
    start = time.perf_counter()
    report["correctness"] = check_correctness(args.smoke)
    report["attention"] = time_attention(args.smoke, on_gpu)
    report["gpt2_small"] = time_gpt2_step(args.smoke)
    report["seconds"] = time.perf_counter() - start
    failed = [
        f"{case}/{impl}"
        for case, row in report["correctness"].items()
        for impl, got in row.items()
        if got.get("ok") is False
    ]
    report["failed"] = failed
    write_json_atomically(out, report)
    print(json.dumps(dict(out=str(out), failed=failed, seconds=report["seconds"])))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
