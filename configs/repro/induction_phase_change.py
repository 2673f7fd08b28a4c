"""The induction-head phase change (Olsson et al. 2022, "In-context Learning and Induction
Heads", arXiv 2209.11895), reproduced on a CPU.

Olsson et al. found that induction heads form in a sudden phase change early in training,
visible as a bump in the training loss, a jump in the heads' prefix-matching (induction) score
and a fall of the in-context-learning score (late-token loss minus early-token loss) — and that
only models with at least two layers go through it (an induction head composes with a
previous-token head in an earlier layer). Their small models were attention-only transformers
trained on text. Here: attention-only models of 1 and 2 layers (width 64, 4 heads, learned
positions) on sequences of random tokens whose first span (of random length) repeats, several
seeds each as vmapped replicas, with head telemetry every ``train.telemetry_every`` steps
(``attnjax.training.telemetry``): the step at which the best induction score first crosses
``train.phase_change_threshold`` is each run's phase-change step.

    uv run python -m experiments.sweep --config=configs/repro/induction_phase_change.py

Variants: ``paper`` (default), ``quick`` (a test-sized run of the same grid).
"""

from __future__ import annotations

import ml_collections

from configs import sweep as sweep_config

VARIANTS = ("paper", "quick")


def get_config(variant: str = "paper") -> ml_collections.ConfigDict:
    """The phase-change reproduction for ``variant`` (``paper`` (default) or ``quick``)."""
    variant = variant or "paper"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {list(VARIANTS)}")
    config = sweep_config.get_config()
    config.unlock()
    config.task.update(seq_len=63, vocab_size=64, prefix_len=32, min_prefix_len=8)
    config.model.update(model_dim=64, num_heads=4, attention_only=True)
    config.train.update(
        batch_size=32, steps=2000, lr=1e-3, warmup=50, log_every=25, eval_every=500,
        eval_batches=8, checkpoint_every=500, telemetry_every=25,
    )  # fmt: skip
    config.sweep.update(heads=(4,), layers=(1, 2), seeds=3)
    if variant == "quick":
        config.task.update(seq_len=15, vocab_size=16, prefix_len=8, min_prefix_len=3)
        config.model.update(model_dim=16)
        config.train.update(
            batch_size=8, steps=6, warmup=1, log_every=3, eval_every=3, eval_batches=1,
            checkpoint_every=6, telemetry_every=3,
        )  # fmt: skip
        config.sweep.update(heads=(2,), seeds=2)
    config.lock()
    return config
