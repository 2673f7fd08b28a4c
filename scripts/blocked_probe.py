"""Blocked attention's compiled cost and speed on the benchmark's causal fwd+bwd cases, for
comparing two checkouts without the benchmark's machinery (run it once per checkout):

    PYTHONPATH=/tmp/before uv run python scripts/blocked_probe.py
    PYTHONPATH=. uv run python scripts/blocked_probe.py

Per case (B, T, N, K, H as in ``attnjax.bench``): XLA's compiled ``temp_size_in_bytes``,
its cost analysis (FLOPs, bytes accessed; a loop body counted once), and the fastest of
``--calls`` calls in wall and process CPU time. The loss weights the output by a random array,
so the output's cotangent is a real array (with ``.sum()`` XLA may fold a constant one).
On a shared machine, alternate the two checkouts and compare minima.
"""

from __future__ import annotations

import argparse
import json
import time

import jax

import attnjax

CASES = {"b4_t1024": (4, 1024, 8, 8, 64), "b1_t4096": (1, 4096, 8, 8, 64)}
CASES["gqa_b4_t1024"] = (4, 1024, 8, 2, 64)


def probe(shape, calls: int) -> dict[str, float]:
    batch, length, heads, kv_heads, width = shape
    keys = jax.random.split(jax.random.key(0), 4)
    q, w = (jax.random.normal(k, (batch, length, heads, width)) for k in keys[::3])
    k, v = (jax.random.normal(k, (batch, length, kv_heads, width)) for k in keys[1:3])

    def loss(q, k, v, w):
        out = attnjax.dot_product_attention(q, k, v, is_causal=True, implementation="blocked")
        return (out * w).sum()

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v, w).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    jax.block_until_ready(compiled(q, k, v, w))
    walls, cpus = [], []
    for _ in range(calls):
        wall, cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(compiled(q, k, v, w))
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {
        "temp_mib": compiled.memory_analysis().temp_size_in_bytes / 2**20,
        "gflops": cost.get("flops", 0.0) / 1e9,
        "mib_accessed": cost.get("bytes accessed", 0.0) / 2**20,
        "min_wall_ms": min(walls) * 1e3,
        "min_cpu_ms": min(cpus) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=7, help="timed calls per case (>= 1)")
    calls = parser.parse_args().calls
    if calls < 1:
        parser.error(f"--calls={calls} must be at least 1")
    for name, shape in CASES.items():
        print(json.dumps({"case": name, **probe(shape, calls)}), flush=True)


if __name__ == "__main__":
    main()
