"""One training run of a small decoder on a task that needs attention.

Run (from the repository root):

    uv run python -m experiments.train --config=configs/train.py --workdir=/tmp/attnjax/recall

Variants (``--config=configs/train.py:<variant>``): ``recall`` (default; multi-query
associative recall), ``induction``, ``copy``, ``reverse``, ``char`` (character-level LM over
``--config.task.path=some.txt``), ``mqar`` (Zoology's MQAR, the smallest setting of their
figure 2: vocabulary 8192, 64 tokens, 4 pairs; a 2-layer, 1-head attention-only model of width
64), ``tiny`` (a few steps of a tiny model, for tests).
Override anything: ``--config.model.num_heads=8 --config.train.steps=2000``.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from configs import common

VARIANTS = ("recall", "induction", "copy", "reverse", "char", "mqar", "tiny")


def task_config(variant: str) -> ml_collections.ConfigDict:
    """The ``task`` section: name, sequence length, vocabulary, task parameters."""
    if variant in ("recall", "tiny"):
        return ml_collections.ConfigDict(
            dict(name="recall", seq_len=15, vocab_size=32, num_pairs=4, num_queries=4)
        )
    if variant == "induction":
        return ml_collections.ConfigDict(
            dict(name="induction", seq_len=23, vocab_size=32, prefix_len=12, min_prefix_len=6)
        )
    if variant in ("copy", "reverse"):
        return ml_collections.ConfigDict(dict(name=variant, seq_len=24, vocab_size=32, length=12))
    if variant == "mqar":
        # zoology/experiments/paper_configs/iclr24_zoology_figure2/configs.py, (64, 4).
        return ml_collections.ConfigDict(
            dict(
                name="mqar", seq_len=64, vocab_size=8192, num_pairs=4, power_a=0.01,
                random_non_queries=False,
            )
        )  # fmt: skip
    if variant == "char":
        # ``path`` must be given on the command line; validated when the run starts.
        return ml_collections.ConfigDict(dict(name="char", seq_len=64, path=""))
    raise ValueError(f"unknown variant {variant!r}; choose one of {list(VARIANTS)}")


def follows(reference: config_dict.FieldReference) -> config_dict.FieldReference:
    """A field that takes ``reference``'s value until it is set itself; setting it never
    changes ``reference`` (unlike ``get_ref``, which ties both fields together both ways)."""
    return config_dict.FieldReference(reference, field_type=reference.get_type())


def get_config(variant: str = "recall") -> ml_collections.ConfigDict:
    """The run config for ``variant`` (default ``recall``)."""
    variant = variant or "recall"
    config = ml_collections.ConfigDict()
    config.task = task_config(variant)
    config.model = common.model(
        {}, vocab_size=256, max_seq_len=64, model_dim=64, num_layers=2, num_heads=4,
        position_embedding="learned", norm="layernorm", dropout_rate=0.0,
    )  # fmt: skip
    # The model's vocabulary and length follow the task's, one way: overriding the model's
    # leaves the task as it is (a plain shared reference would change both).
    if variant != "char":
        config.model.vocab_size = follows(config.task.get_ref("vocab_size"))
    config.model.max_seq_len = follows(config.task.get_ref("seq_len"))
    config.train = ml_collections.ConfigDict(
        dict(
            batch_size=32,
            steps=1000,
            lr=3e-3,
            warmup=50,
            weight_decay=0.1,
            clip=1.0,
            log_every=50,
            eval_every=250,
            eval_batches=8,
            checkpoint_every=250,
            keep=2,
            seed=0,
            # Head telemetry (attnjax.training.telemetry): probe every 25 steps (and at 0 and
            # the last step; 0 turns it off): 32 points over the sweep's 800 steps, enough to
            # place a jump seen within 50 steps, for a few % of the run (scripts/
            # telemetry_cost.py). 0.2: three times a random head's score (the module says more).
            telemetry_every=25,
            phase_change_threshold=0.2,
        )
    )
    config.mesh = common.mesh()
    config.distributed = False
    if variant == "tiny":
        config.model.update(model_dim=16, num_layers=1, num_heads=2)
        config.train.update(
            batch_size=8, steps=20, warmup=2, log_every=5, eval_every=10, eval_batches=2,
            checkpoint_every=10,
        )  # fmt: skip
    if variant == "char":
        config.train.update(steps=2000, lr=1e-3)
    if variant == "mqar":
        # Zoology's figure 2 (iclr24_zoology_figure2/configs.py): widths 64..512, 2 layers,
        # 1 head with biases and attention dropout 0.1, learned positions, no state mixer;
        # AdamW, weight decay 0.1, batch 512, 64 epochs of 100,000 rows (12,500 steps), cosine
        # decay without warmup, rates np.logspace(-4, -2, 4) (2.15e-3 is the third). Not
        # matched: their embedding dropout 0.1 (our dropout_rate also drops residual branches),
        # their cosine to 0 (ours ends at 10%) and our gradient clipping.
        config.model.update(
            model_dim=64, num_layers=2, num_heads=1, attention_only=True, attention_bias=True,
            attention_dropout_rate=0.1,
        )  # fmt: skip
        config.train.update(
            batch_size=512, steps=12_500, lr=2.15e-3, warmup=0, weight_decay=0.1,
            eval_every=500, eval_batches=6, checkpoint_every=2500,
        )  # fmt: skip
    config.lock()
    return config
