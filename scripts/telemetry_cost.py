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
- calls: the fastest of ``--calls`` train-step calls and probe calls (with the host's fetch
  and ``telemetry_scalars``), timed alone; ``1 + probe / (every x step)`` is the overhead
  they predict, steadier than whole runs on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
from absl import logging

from attnjax.training import run_config as run_config_lib
from attnjax.training import train_and_evaluate
from attnjax.training.state import init_model, init_train_state
from attnjax.training.step import make_train_step
from attnjax.training.telemetry import make_probe, telemetry_scalars
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


def fastest_calls(config, calls: int) -> tuple[float, float]:
    """``(train step s, probe s)``: the fastest of ``calls`` calls of each, as the loop makes
    them (the step with donated state; the probe's output fetched and flattened)."""
    task, model_config = run_config_lib.check_run_config(config)
    split = init_model(model_config, config.train.seed)
    tx = run_config_lib.optimizer_for(config.train)
    state = init_train_state(split.params, tx)
    step = make_train_step(split.graphdef, split.rest, tx)
    probe = jax.jit(make_probe(split.eval_graphdef, split.rest, model_config))
    batch = task.batch(0, config.train.batch_size)
    state, metrics = step(state, batch)
    telemetry_scalars(probe(state.params))
    step_s, probe_s = [], []
    for _ in range(calls):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        step_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        telemetry_scalars(probe(state.params))
        probe_s.append(time.perf_counter() - start)
    return min(step_s), min(probe_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--every", type=int, default=None, help="default: configs/train.py's")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--calls", type=int, default=200)
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
    step_s, probe_s = fastest_calls(
        run_config(args.steps, every, args.layers, args.heads), args.calls
    )
    print(
        f"\n{args.layers} layers, {args.heads} heads, {args.steps} steps, probe every {every} "
        f"(medians of {args.repeats}):\n"
        f"  steady step time on/off: {steady[0] / steady[every]:.3f}\n"
        f"  whole run wall on/off:   {wall[every] / wall[0]:.3f}\n"
        f"  fastest of {args.calls} calls: train step {1e3 * step_s:.2f} ms, probe "
        f"{1e3 * probe_s:.2f} ms: predicted on/off {1 + probe_s / (every * step_s):.3f}"
    )


if __name__ == "__main__":
    main()
