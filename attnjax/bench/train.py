"""The train suite: one full training step of attnjax's decoder against nanoGPT's.

The step (forward, backward, clipped AdamW update) is built as ``experiments.train`` builds it
(``attnjax.training.init_model``, ``make_optimizer``, ``make_train_step``); the model is shaped
as nanoGPT with ``bias=False``. With torch, nanoGPT's own step is timed in the same run,
interleaved with attnjax's (one block of steps of each in turn).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from attnjax.bench import peers, report, timing
from attnjax.models import ModelConfig

__all__ = [
    "DEFAULT_TRAIN_SETTINGS",
    "TRAIN_NOTES",
    "TRAIN_SETTINGS",
    "TrainSetting",
    "attnjax_model_config",
    "train_rows",
]


@dataclasses.dataclass(frozen=True)
class TrainSetting:
    """A decoder's shape and batch; ``steps`` per timed repeat."""

    num_layers: int
    num_heads: int
    model_dim: int
    seq_len: int
    batch_size: int
    steps: int
    vocab_size: int = 65

    def describe(self) -> str:
        return (
            f"L={self.num_layers} N={self.num_heads} D={self.model_dim} T={self.seq_len} "
            f"B={self.batch_size} V={self.vocab_size}"
        )


TRAIN_SETTINGS = {
    "l4_d128_t64_b12": TrainSetting(4, 4, 128, 64, 12, steps=20),  # nanoGPT's CPU recipe
    "l6_d384_t256_b16": TrainSetting(6, 6, 384, 256, 16, steps=2),
    "tiny": TrainSetting(1, 2, 16, 8, 2, steps=2),  # for tests
}
DEFAULT_TRAIN_SETTINGS = ("l4_d128_t64_b12", "l6_d384_t256_b16")

TRAIN_NOTES = (
    "attnjax vs nanoGPT: same shapes, parameters and update (AdamW, decay on rank>=2 weights, "
    "clip 1.0); differences: attnjax's step also computes accuracy and the gradient norm as "
    "metrics, its learning-rate schedule runs inside the step (nanoGPT sets it from Python), "
    "Adam b2 0.999 (nanoGPT's shakespeare_char: 0.99), and init is plain N(0, 0.02) (nanoGPT "
    "scales residual projections); none changes the work. The batch is fixed (no data loading)."
)


def attnjax_model_config(setting: TrainSetting) -> ModelConfig:
    """attnjax's decoder shaped as nanoGPT with ``bias=False``: no biases in projections or
    norms, tied unembedding, learned positions, exact GELU, pre-LN with a final norm."""
    return ModelConfig(
        vocab_size=setting.vocab_size,
        max_seq_len=setting.seq_len,
        model_dim=setting.model_dim,
        num_layers=setting.num_layers,
        num_heads=setting.num_heads,
        attention_bias=False,
        mlp_bias=False,
        norm_bias=False,
        tie_embeddings=True,
        position_embedding="learned",
        activation="gelu",
        dropout_rate=0.0,
    )


def setting_tokens(setting: TrainSetting) -> np.ndarray:
    """The fixed batch: seeded token ids ``[B, T + 1]`` below the vocabulary size."""
    rng = np.random.default_rng(0)
    return rng.integers(0, setting.vocab_size, (setting.batch_size, setting.seq_len + 1))


def attnjax_step(setting: TrainSetting, tokens: np.ndarray, compiler_options=None):
    """attnjax's jitted train step on ``tokens`` [B, T + 1], compiled ahead of time, its state
    donated from step to step as in training; ``compiler_options(platform)`` gives its XLA
    options (None: XLA's own).

    Returns ``(step, sync, params, compile_seconds)``: ``step()`` runs one step (asynchronously),
    ``sync()`` waits for it, ``params`` is the parameter count.
    """
    from attnjax.data import Batch
    from attnjax.training import init_model, init_train_state, make_optimizer, make_train_step

    split = init_model(attnjax_model_config(setting), seed=0)
    tx = make_optimizer(
        learning_rate=1e-3, steps=2000, warmup_steps=100, weight_decay=0.1, clip_norm=1.0
    )
    state = [init_train_state(split.params, tx)]
    options = None if compiler_options is None else compiler_options(jax.default_backend())
    train_step = make_train_step(split.graphdef, split.rest, tx, compiler_options=options)
    ids = tokens.astype(np.int32)
    batch = Batch(
        inputs=jnp.asarray(ids[:, :-1]),
        targets=jnp.asarray(ids[:, 1:]),
        loss_mask=jnp.ones(ids[:, 1:].shape, jnp.float32),
    )
    compiled, compile_s = timing.compile_seconds(train_step.lower(state[0], batch))

    def step():
        state[0], _ = compiled(state[0], batch)

    params = int(sum(x.size for x in jax.tree.leaves(split.params)))
    return step, lambda: jax.block_until_ready(state[0]), params, compile_s


def train_flops(setting: TrainSetting) -> float:
    """FLOPs of one training step (``attnjax.accounting``'s count per token × B·T)."""
    from attnjax.accounting.flops import training_flops_per_token

    per_token = training_flops_per_token(attnjax_model_config(setting), setting.seq_len)
    return per_token * setting.batch_size * setting.seq_len


def _block(step: Callable[[], None], sync: Callable[[], object], steps: int):
    """A timed block: ``steps`` steps, then wait for the last."""

    def run():
        for _ in range(steps):
            step()
        sync()

    return run


def _prepared(framework, step, sync, steps, fields) -> timing.Prepared:
    contender = timing.Contender(framework, _block(step, sync, steps), _block(step, sync, 1))
    return timing.Prepared({"framework": framework, **fields}, contender)


def time_setting(
    setting: TrainSetting, repeats: int, with_torch: bool, compiler_options=None
) -> list[dict]:
    """Seconds per step, median over ``repeats`` blocks of ``setting.steps`` steps after one
    warm-up step, of attnjax (and nanoGPT with torch), the blocks of both taken in turn."""
    tokens = setting_tokens(setting)
    step, sync, params, compile_s = attnjax_step(setting, tokens, compiler_options)
    fields = {"params": params, "compile_seconds": compile_s}
    rows = [_prepared("attnjax", step, sync, setting.steps, fields)]
    if with_torch:
        step, params = peers.nanogpt_step(setting, tokens)
        rows.append(
            _prepared("torch nanoGPT", step, lambda: None, setting.steps, {"params": params})
        )
    results = timing.time_prepared(rows, repeats)
    for result in results:  # a sample is a block of steps: per step
        result["seconds"] /= setting.steps
        result["iqr_seconds"] /= setting.steps
    return results


def train_rows(
    setting_names, repeats: int, with_torch: bool, matmul: float, *, compiler_options=None
) -> list[dict]:
    """Every row of the train suite (one per setting × framework), printed setting by setting.

    Args:
      setting_names: keys of :data:`TRAIN_SETTINGS`; repeats: timed blocks per setting;
      with_torch: also time nanoGPT; matmul: the GFLOP/s ``percent_of_matmul`` is relative to;
      compiler_options: ``platform -> XLA options`` of attnjax's step (None: XLA's own).

    Each row: the setting's fields, ``framework``, ``seconds`` (per step), ``params``,
    ``flops_per_step``, ``tokens_per_s`` (B·T / seconds), ``gflops``, ``percent_of_matmul``
    and ``ratios`` (attnjax's seconds / nanoGPT's).
    """
    rows = []
    for name in setting_names:
        setting = TRAIN_SETTINGS[name]
        tokens = setting.batch_size * setting.seq_len
        group = dict(setting=name, **dataclasses.asdict(setting), tokens_per_step=tokens)
        flops = train_flops(setting)
        results = time_setting(setting, repeats, with_torch, compiler_options)
        torch_s = results[-1]["seconds"] if with_torch else None
        for result in results:
            row = {**group, **result, "flops_per_step": flops}
            row["tokens_per_s"] = tokens / row["seconds"]
            row["gflops"] = flops / row["seconds"] / 1e9
            row["percent_of_matmul"] = 100 * row["gflops"] / matmul
            row["ratios"] = {} if torch_s is None or result is results[-1] else {
                "torch nanoGPT": row["seconds"] / torch_s}  # fmt: skip
            rows.append(row)
        report.print_train_group(rows[-len(results) :], setting, repeats)
    return rows
