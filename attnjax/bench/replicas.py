"""Seeds vmapped against seeds in turn: S replicas of one model trained as one vmapped step
(``attnjax.training.replicas.make_replica_step``, what a sweep point with ``sweep.seeds=S``
runs) against S separate runs' steps (``make_train_step``, what S single runs would run),
timed in turn in the same run over the same number of optimizer updates per replica. Both
start from the same parameters; their losses after the timed steps are checked to agree."""

from __future__ import annotations

import jax
import numpy as np

from attnjax.bench import timing
from attnjax.data import make_task
from attnjax.models import ModelConfig

__all__ = ["REPLICA_SETTINGS", "replica_rows"]

# name -> (layers, heads, width, seeds, batch, steps timed per repeat): the default sweep's
# 2-layer, 4-head point on its induction task (T = 23, V = 32), and a tiny one for tests.
REPLICA_SETTINGS = {
    "sweep_l2_h4_s3": (2, 4, 64, 3, 32, 20),
    "sweep_l2_h4_s8": (2, 4, 64, 8, 32, 10),
    "tiny": (1, 2, 16, 2, 4, 2),
}


class _Train:
    lr, warmup, weight_decay, clip = 3e-3, 5, 0.1, 1.0

    def __init__(self, steps: int, batch_size: int):
        self.steps, self.batch_size = steps, batch_size


def replica_rows(settings, repeats: int, compiler_options=None) -> list[dict]:
    """One row per setting: median seconds of the vmapped and of the sequential steps, and
    sequential / vmapped (above 1: vmapping pays)."""
    return [_row(name, repeats, compiler_options) for name in settings]


def _row(name: str, repeats: int, compiler_options) -> dict:
    # the training stack (orbax, absl flags) only when a row runs: importing bench loads none
    from attnjax.training import sharding as sharding_lib
    from attnjax.training.replicas import Replica, init_replica_state, make_replica_step
    from attnjax.training.state import init_model, init_train_state, make_optimizer
    from attnjax.training.step import make_train_step

    layers, heads, width, seeds, batch_size, steps = REPLICA_SETTINGS[name]
    task = make_task("induction", seq_len=23, vocab_size=32, prefix_len=12, min_prefix_len=6)
    config = ModelConfig(
        vocab_size=32, max_seq_len=23, model_dim=width, num_layers=layers, num_heads=heads
    )
    train = _Train(steps=10_000, batch_size=batch_size)
    schedule = dict(steps=train.steps, warmup_steps=train.warmup, weight_decay=0.1, clip_norm=1.0)
    tx = make_optimizer(learning_rate=train.lr, **schedule)
    options = None if compiler_options is None else compiler_options(jax.default_backend())
    replicas = [Replica(seed, train.lr) for seed in range(seeds)]
    mesh = sharding_lib.make_mesh(data=1)
    replica_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    split, state, rest = init_replica_state(config, replicas, train, replica_sharding)
    vmapped_step = make_replica_step(split, train, False, replica_sharding, options)
    lrs = jax.device_put(np.full((seeds,), train.lr, np.float32), replica_sharding)
    seed_ids = jax.device_put(np.arange(seeds, dtype=np.int32), replica_sharding)
    batches = [task.batch(i, batch_size) for i in range(steps)]
    stacked = [jax.tree.map(lambda x: np.stack([x] * seeds), b) for b in batches]

    singles = []
    for seed in range(seeds):
        one = init_model(config, seed)
        step = make_train_step(one.graphdef, one.rest, tx, compiler_options=options)
        singles.append([step, init_train_state(one.params, tx)])

    carry = {"state": state}

    def vmapped():
        for batch in stacked:
            carry["state"], metrics = vmapped_step(carry["state"], rest, batch, lrs, seed_ids)
        return jax.block_until_ready(metrics["loss"])

    def sequential():
        losses = []
        for entry in singles:
            step, single_state = entry
            for batch in batches:
                single_state, metrics = step(single_state, batch)
            entry[1] = single_state
            losses.append(metrics["loss"])
        return np.asarray(jax.block_until_ready(losses))

    np.testing.assert_allclose(np.asarray(vmapped()), sequential(), rtol=1e-4)  # compiles both
    samples = timing.interleaved_samples(
        [timing.Contender("vmapped", vmapped), timing.Contender("sequential", sequential)],
        repeats,
    )
    vmapped_s, sequential_s = (s.summary()["seconds"] for s in samples)
    print(
        f"{name:>16}  S={seeds}  {steps} steps each  vmapped {vmapped_s * 1e3:9.1f} ms  "
        f"sequential {sequential_s * 1e3:9.1f} ms  sequential/vmapped "
        f"{sequential_s / vmapped_s:5.2f}x",
        flush=True,
    )
    return dict(
        setting=name, seeds=seeds, layers=layers, heads=heads, model_dim=width,
        batch_size=batch_size, steps=steps, vmapped_s=vmapped_s, sequential_s=sequential_s,
        sequential_over_vmapped=sequential_s / vmapped_s,
    )  # fmt: skip
