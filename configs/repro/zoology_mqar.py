"""Zoology Figure 2, attention rows: multi-query associative recall (Arora et al. 2023,
"Zoology: Measuring and Improving Recall in Efficient Language Models", arXiv 2312.04927).

Their settings (``zoology/experiments/paper_configs/iclr24_zoology_figure2/configs.py`` and
``zoology/data/multiquery_ar.py`` of HazyResearch/zoology): vocabulary 8192 (keys from the
lower half, values from the upper), query gaps drawn with ``power_a = 0.01``, (sequence
length, key-value pairs) = (64, 4) and (128, 8); a 2-layer model of 1-head attention with
learned positions and no MLP (``state_mixer = Identity``), d_model 64 and 128; AdamW with a
cosine schedule, learning rates ``logspace(-4, -2, 4)``, the best of the four reported; early
stop once validation accuracy exceeds 0.99. They train on 100,000 examples for up to 64 epochs
at batch 512 (up to 12,500 steps) on a GPU.

Here, on 2 CPU cores: the same task, model and learning rates, ``train.steps`` steps of batch
``train.batch_size`` drawn fresh each step (no fixed training set), each learning rate a vmapped
replica, early stop at 0.99 validation accuracy, the learning rate chosen on the validation
stream and accuracy reported on a separate test stream. Differences from theirs: attention
dropout 0.1 as their MHA, but no embedding dropout; weight decay 0.1 and a 5% warmup (ours),
gradient clipping at 1.

    uv run python -m experiments.sweep --config=configs/repro/zoology_mqar.py

Variants (``:quick`` for a test-sized run of the same grid).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from configs import sweep as sweep_config
from configs import train as train_config

VARIANTS = ("paper", "quick")
LEARNING_RATES = tuple(float(lr) for lr in np.logspace(-4, -2, 4))  # as Zoology's figure 2


def get_config(variant: str = "paper") -> ml_collections.ConfigDict:
    """The MQAR reproduction for ``variant`` (``paper`` (default) or ``quick``)."""
    variant = variant or "paper"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {list(VARIANTS)}")
    config = sweep_config.get_config()
    config.unlock()
    config.task = ml_collections.ConfigDict(
        dict(name="mqar", seq_len=64, vocab_size=8192, num_pairs=4, power_a=0.01)
    )
    config.model.update(
        model_dim=64, num_layers=2, num_heads=1, attention_only=True,
        position_embedding="learned", attention_dropout_rate=0.1,
    )  # fmt: skip
    # the model's vocabulary and positions follow the (new) task section, as in configs/train
    config.model.vocab_size = train_config.follows(config.task.get_ref("vocab_size"))
    config.model.max_seq_len = train_config.follows(config.task.get_ref("seq_len"))
    config.train.update(
        batch_size=64, steps=1500, lr=LEARNING_RATES[0], warmup=75, log_every=50,
        eval_every=100, eval_batches=8, checkpoint_every=500,
    )  # fmt: skip
    config.sweep.update(
        heads=(1,), layers=(2,), seeds=1, learning_rates=LEARNING_RATES,
        early_stop_accuracy=0.99,
        variants=tuple(
            {"name": f"d{d}_t{t}_kv{kv}", "model.model_dim": d, "task.seq_len": t,
             "task.num_pairs": kv}
            for t, kv in ((64, 4), (128, 8)) for d in (64, 128)
        ),
    )  # fmt: skip
    if variant == "quick":
        config.task.vocab_size = 64
        config.train.update(
            batch_size=8, steps=6, warmup=1, log_every=3, eval_every=3, eval_batches=1,
            checkpoint_every=6, telemetry_every=3,
        )  # fmt: skip
        config.sweep.update(
            learning_rates=LEARNING_RATES[2:],
            variants=tuple(
                {"name": f"d{d}_t{t}_kv{kv}", "model.model_dim": d, "task.seq_len": t,
                 "task.num_pairs": kv}
                for t, kv in ((16, 2),) for d in (16, 32)
            ),
        )  # fmt: skip
    config.lock()
    return config
