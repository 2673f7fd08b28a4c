"""Deviceless compiles for tests/test_aot.py, run in a subprocess without network:

    python -m tests._aot_compile attention tpu v5e:2x2
    python -m tests._aot_compile attention cuda h200
    python -m tests._aot_compile train_step tpu v5e:2x2
    python -m tests._aot_compile gpu_targets cuda all
    python -m tests._aot_compile plan tpu v5e:2x2
    python -m tests._aot_compile plan cuda h200:1x1x8

Prints one JSON line: for every implementation and mesh, what the compiled program holds.
Loads libtpu or the CUDA plugin: run it only under ``unshare -n`` (see test_aot.py).
"""

from __future__ import annotations

import json
import math
import re
import sys
import time

import jax
import jax.numpy as jnp

import attnjax
from attnjax import aot

# Tiny shapes: B=8 divides every mesh's data axis, N=4 query heads share K=2 key/value
# heads (GQA) and both divide model=2; T=128 is one Pallas block, H=64 suits cuDNN.
B, T, N, K, H = 8, 128, 4, 2, 64
IMPLEMENTATIONS = {
    "tpu": ("pallas_tpu", "blocked", "xla", "einsum", "vmap", None),
    "cuda": ("cudnn", "blocked", "xla", "einsum", "vmap", None),
}


def _meshes(devices):
    n = len(devices)
    return {"single": (1, 1), "data": (n, 1), "data_model": (n // 2, 2)}


def _fwd_bwd(implementation):
    def attention(q, k, v):
        lengths = jnp.array([T, T - 5, T, 100, T, 64, T, T - 1])
        return attnjax.dot_product_attention(
            q, k, v, is_causal=True, key_value_seq_lengths=lengths,
            implementation=implementation,
        )  # fmt: skip

    def fwd_bwd(q, k, v):  # forward and backward in one program
        out, vjp = jax.vjp(attention, q, k, v)
        return (out, *vjp(out))

    return fwd_bwd


def _topology(platform: str, name: str):
    return aot.tpu_topology(name) if platform == "tpu" else aot.gpu_topology(name, 8)


def attention(platform: str, name: str) -> dict:
    devices = _topology(platform, name).devices
    results = {}
    for mesh_name, (data, model) in _meshes(devices).items():
        mesh = aot.mesh(devices, data=data, model=model)
        spec = ("data", None, "model", None)
        q = aot.sharded_struct((B, T, N, H), jnp.bfloat16, mesh, spec)
        k = v = aot.sharded_struct((B, T, K, H), jnp.bfloat16, mesh, spec)
        shards = [x.sharding.shard_shape(x.shape) for x in (q, k, v)]
        total = sum(math.prod(x.shape) * 2 for x in (q, q, k, v))  # out, dq, dk, dv
        for implementation in IMPLEMENTATIONS[platform]:
            start = time.perf_counter()
            compiled = aot.compile(_fwd_bwd(implementation), q, k, v)
            text = compiled.as_text()
            results[f"{implementation}/{mesh_name}"] = dict(
                input_gathers=aot.all_gathers(text, shards),
                all_gathers=aot.all_gathers(text),
                output_bytes=aot.output_bytes(compiled),
                memory_output_bytes=compiled.memory_analysis().output_size_in_bytes,
                expected_bytes=total // (data * model),
                kernels=aot.kernels(text),
                # Mosaic calls: forward, backward dK/dV and backward dQ; cuDNN's backward.
                mosaic_calls=text.count('custom_call_target="tpu_custom_call"'),
                cudnn_backward=bool(re.search(r"__cudnn\$fmha\w*Backward", text)),
                seconds=round(time.perf_counter() - start, 1),
            )
    return results


def gpu_targets() -> dict:
    """Every committed GPU target on one device: its name and whether cuDNN attention compiles."""
    results = {}
    for target in aot.GPU_TARGETS:
        devices = aot.gpu_topology(target, 1).devices
        mesh = aot.mesh(devices)
        q = aot.sharded_struct((B, T, N, H), jnp.bfloat16, mesh)
        k = aot.sharded_struct((B, T, K, H), jnp.bfloat16, mesh)
        text = aot.compile(_fwd_bwd(None), q, k, k).as_text()
        results[target] = dict(device_kind=devices[0].device_kind, kernels=aot.kernels(text))
    return results


def train_step(platform: str, name: str) -> dict:
    from attnjax.aot.steps import compile_train_step
    from configs import sweep

    config = sweep.get_config()
    devices = _topology(platform, name).devices
    results = {}
    for data, model in ((4, 1), (2, 2)):
        start = time.perf_counter()
        mesh = aot.mesh(devices, data=data, model=model)
        compiled = compile_train_step(config, mesh, platform=platform)
        text = compiled.as_text()
        results[f"data={data},model={model}"] = dict(
            kernels=aot.kernels(text),
            all_gathers=aot.all_gathers(text),
            seconds=round(time.perf_counter() - start, 1),
        )
    return results


def plan(platform: str, name: str) -> dict:
    """compile_check rows: a tiny run on a (data, fsdp) mesh of ``name``; on TPU also a batch
    whose activations cannot fit one v5e chip (the compiler refuses: a "does not fit" row)."""
    import ml_collections

    from attnjax.aot.plan import compile_check, json_ready
    from configs import train

    config = ml_collections.ConfigDict(train.get_config("tiny").to_dict())
    config.mesh.update(data=2, fsdp=2, model=1)
    rows = {"tiny": compile_check(config, name)[0]}
    if platform == "tpu":  # the same tiny model with 2^20 x 15 tokens on one chip: tens of GB
        config.mesh.update(data=1, fsdp=1)
        rows["oom"] = compile_check(config, "v5e:1x1", batch_size=2**20)[0]
    return dict(zip(rows, json_ready(list(rows.values())), strict=True))


if __name__ == "__main__":
    what, platform, name = sys.argv[1:4]
    if what == "gpu_targets":
        print(json.dumps(gpu_targets()))
    else:
        run = {"attention": attention, "train_step": train_step, "plan": plan}[what]
        print(json.dumps(run(platform, name)))
