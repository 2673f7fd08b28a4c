"""Compile time of the train step, layers unrolled vs stacked and scanned (``scan_layers``).

For each depth L and layout, builds ``DecoderLM`` (tiny width), the AdamW train state and
``attnjax.training.step.make_train_step``, then times tracing + lowering and XLA's compile of
the step separately (``step.lower(state, batch)``, ``.compile()``), each in a fresh process so
that no trace or compile cache is shared. Prints one row per point and, with ``--json``, the
rows as JSON.

    JAX_PLATFORMS=cpu uv run python scripts/scan_compile_time.py --layers=2,8,48 --dim=64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def measure(layers: int, scan: bool, dim: int, remat: str) -> dict:
    """One point, in this process."""
    import jax
    import jax.numpy as jnp

    from attnjax.data.tasks import Batch
    from attnjax.models import ModelConfig
    from attnjax.training.state import init_model, init_train_state, make_optimizer
    from attnjax.training.step import make_train_step

    config = ModelConfig(
        vocab_size=256, max_seq_len=64, model_dim=dim, num_layers=layers, num_heads=4,
        scan_layers=scan, remat=remat,
    )  # fmt: skip
    start = time.perf_counter()
    split = init_model(config, seed=0)
    tx = make_optimizer(
        learning_rate=1e-3, steps=10, warmup_steps=1, weight_decay=0.1, clip_norm=1.0
    )
    state = jax.eval_shape(lambda: init_train_state(split.params, tx))
    init_s = time.perf_counter() - start
    tokens = jax.ShapeDtypeStruct((8, 64), jnp.int32)
    batch = Batch(tokens, tokens, jax.ShapeDtypeStruct((8, 64), jnp.float32))
    step = make_train_step(split.graphdef, split.rest, tx)
    start = time.perf_counter()
    lowered = step.lower(state, batch)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    lowered.compile()
    compile_s = time.perf_counter() - start
    return {
        "layers": layers,
        "scan_layers": scan,
        "remat": remat,
        "model_dim": dim,
        "init_s": round(init_s, 2),
        "trace_lower_s": round(lower_s, 2),
        "compile_s": round(compile_s, 2),
        "total_s": round(lower_s + compile_s, 2),
        "hlo_chars": len(lowered.as_text()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="2,8,48", help="comma-separated depths")
    parser.add_argument("--dim", type=int, default=64, help="model width D")
    parser.add_argument("--remat", default="none", choices=("none", "full", "dots"))
    parser.add_argument("--json", action="store_true", help="also print the rows as JSON")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # "L,scan": measure in this process
    args = parser.parse_args()
    if args.one:
        layers, scan = args.one.split(",")
        print(json.dumps(measure(int(layers), scan == "1", args.dim, args.remat)))
        return
    rows = []
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    for layers in (int(x) for x in args.layers.split(",")):
        for scan in (False, True):
            command = [sys.executable, __file__, f"--one={layers},{int(scan)}"]
            command += [f"--dim={args.dim}", f"--remat={args.remat}"]
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"L={row['layers']:>3} scan_layers={row['scan_layers']!s:<5} "
                f"trace+lower {row['trace_lower_s']:>6.2f} s  compile {row['compile_s']:>6.2f} s"
                f"  total {row['total_s']:>6.2f} s  (init {row['init_s']:.2f} s, "
                f"HLO {row['hlo_chars']:,} chars)",
                flush=True,
            )
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
