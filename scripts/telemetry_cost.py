"""What head telemetry costs a training run: the default sweep's model trained with
``train.telemetry_every=0`` and at the default interval, interleaved, from fresh workdirs:

    uv run python scripts/telemetry_cost.py                      # 2 layers, 4 heads, 300 steps
    uv run python scripts/telemetry_cost.py --steps=800 --repeats=3 --every=25

The model and task are ``configs/sweep.py``'s (D=64, induction, batch 32) at one point
(``--layers``, ``--heads``). Each repeat runs telemetry off, then on (the order alternates per
repeat) through ``attnjax.training.train_and_evaluate``, as ``experiments.train`` runs it.
Printed per run and as ratios on / off (medians over repeats):

- steady: the loop's steady-state throughput (``tokens_per_s``): the probe's device time and
  its host work (fetching, logging) are inside it; compiles, evaluations and saves are not.
- run: the whole run's wall time (``wall_s``), with the probe's compile and ``telemetry.png``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from absl import logging

from attnjax.training import train_and_evaluate
from configs import sweep as sweep_config


def run_config(steps: int, every: int, layers: int, heads: int):
    config = sweep_config.get_config()
    config.unlock()
    del config["sweep"]
    config.model.update(num_layers=layers, num_heads=heads)
    config.train.update(
        steps=steps, telemetry_every=every, eval_every=steps, checkpoint_every=steps
    )
    config.lock()
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--every", type=int, default=None, help="default: configs/train.py's")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)
    default_every = sweep_config.get_config().train.telemetry_every
    every = default_every if args.every is None else args.every
    results: dict[int, list] = {0: [], every: []}
    for repeat in range(args.repeats):
        order = (0, every) if repeat % 2 == 0 else (every, 0)
        for interval in order:
            config = run_config(args.steps, interval, args.layers, args.heads)
            with tempfile.TemporaryDirectory() as workdir:
                result = train_and_evaluate(config, workdir)
            results[interval].append(result)
            print(
                f"repeat {repeat} telemetry_every={interval:3d}: "
                f"{result.tokens_per_s:9.0f} tokens/s steady, {result.wall_s:6.2f} s run",
                flush=True,
            )
    steady = {k: statistics.median(r.tokens_per_s for r in v) for k, v in results.items()}
    wall = {k: statistics.median(r.wall_s for r in v) for k, v in results.items()}
    print(
        f"\n{args.layers} layers, {args.heads} heads, {args.steps} steps, probe every {every} "
        f"(medians of {args.repeats}):\n"
        f"  steady step time on/off: {steady[0] / steady[every]:.3f}\n"
        f"  whole run wall on/off:   {wall[every] / wall[0]:.3f}"
    )


if __name__ == "__main__":
    main()
