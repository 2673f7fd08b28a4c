"""Head × layer sweep on induction (repeat a random sequence of random length 6-12).

The length varies, so the distance back to the answer varies: no positional rule works and
the task needs an induction circuit, which takes two attention layers (one to copy each
token's predecessor into it, one to find the earlier occurrence of the current token and read
what followed). One layer is left with in-context guessing; two or more layers solve it.

Run (from the repository root; the workdir it uses is printed first):

    uv run python -m experiments.sweep                                   # this default sweep
    uv run python -m experiments.sweep --config=configs/sweep.py:fixed_head_dim
    uv run python -m experiments.sweep --config.sweep.shard=0/4 --workdir=DIR   # 1 of 4 shards
    uv run python -m experiments.sweep --merge --workdir=DIR                    # gather shards

Variants: ``fixed_model_dim`` (default: width D fixed, head width D/N shrinks as heads grow),
``fixed_head_dim`` (head width H fixed at ``sweep.head_dim``, D kept: attention grows with heads,
N*H need not equal D; ``attnjax.models.point_config`` builds every point),
``tiny`` (a seconds-long grid, for tests). Every run field of ``configs/train.py`` applies.

Each point trains ``sweep.seeds`` seeds (3) for each of ``sweep.learning_rates`` (default
``train.lr``) as replicas of one vmapped program (``attnjax.training.replicas``); the table
shows means with 95% Student-t intervals over seeds at each cell's best learning rate (chosen
on a validation stream, reported on a test stream).
"""

from __future__ import annotations

import ml_collections

from configs import train as train_config

VARIANTS = ("fixed_model_dim", "fixed_head_dim", "tiny")


def get_config(variant: str = "fixed_model_dim") -> ml_collections.ConfigDict:
    """The sweep config for ``variant`` (default ``fixed_model_dim``)."""
    variant = variant or "fixed_model_dim"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {list(VARIANTS)}")
    config = train_config.get_config("induction")
    config.unlock()
    config.model.model_dim = 64
    config.train.update(
        batch_size=32, steps=800, lr=3e-3, warmup=40, log_every=50, eval_every=800,
        eval_batches=8, checkpoint_every=800,
    )  # fmt: skip
    config.sweep = ml_collections.ConfigDict(
        dict(
            heads=(1, 2, 4, 8),
            layers=(1, 2, 4),
            fixed="head_dim" if variant == "fixed_head_dim" else "model_dim",
            head_dim=16,
            shard="0/1",
            retry_failed=False,
            # Replicas of every point, trained as one vmapped program (attnjax.training.replicas):
            # seeds train.seed, train.seed + 1, ... for each learning rate (empty: train.lr).
            seeds=3,
            learning_rates=(),
            early_stop_accuracy=0.0,  # freeze a replica at this validation accuracy (0: off)
            variants=(),  # extra axes: dicts of dotted config keys -> values (see run_sweep)
        )
    )
    if variant == "tiny":
        config.model.model_dim = 16
        config.task.update(seq_len=11, vocab_size=16, prefix_len=6, min_prefix_len=3)
        config.sweep.update(heads=(1, 2), layers=(1, 2), seeds=2)
        config.train.update(
            batch_size=8, steps=12, warmup=2, log_every=4, eval_every=6, eval_batches=2,
            checkpoint_every=6,
        )  # fmt: skip
    config.lock()
    return config
