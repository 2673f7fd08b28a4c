"""The train state: parameters, optimizer state and step, as one pytree.

The NNX model is split once into ``graphdef`` (structure, static), ``params`` (trained) and
``rest`` (other variables, e.g. dropout RNG state, kept fixed). Only ``TrainState`` changes
during training and is checkpointed; ``graphdef`` and ``rest`` are rebuilt from the config.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from attnjax.models import DecoderLM, ModelConfig
from attnjax.training.sharding import path_string

__all__ = [
    "TrainState",
    "adamw_with_schedule",
    "decay_mask",
    "decays",
    "make_optimizer",
    "SplitModel",
    "init_model",
    "init_train_state",
]


class TrainState(NamedTuple):
    """``step`` (int32 scalar), ``params`` (nnx.State of nnx.Param), ``opt_state`` (optax)."""

    step: jax.Array
    params: nnx.State
    opt_state: Any


def make_optimizer(
    *,
    learning_rate: float,
    steps: int,
    warmup_steps: int,
    weight_decay: float,
    clip_norm: float,
) -> optax.GradientTransformation:
    """AdamW with linear warmup then cosine decay (to 10%), after global-norm clipping.

    Weight decay applies by parameter role (``decays``): projection kernels and embeddings
    decay; biases (``bias``, ``*_bias``, whatever their rank) and norms' scales do not.
    """
    if not 0 < learning_rate < math.inf:
        raise ValueError(f"train.lr must be positive and finite, got {learning_rate}")
    if not 0 <= warmup_steps < max(steps, 1):
        raise ValueError(f"train.warmup={warmup_steps} must be in [0, train.steps={steps})")
    if not 0 < clip_norm <= math.inf:
        raise ValueError(f"train.clip must be positive, got {clip_norm}")
    if not 0 <= weight_decay < math.inf:
        raise ValueError(f"train.weight_decay must be >= 0 and finite, got {weight_decay}")
    return adamw_with_schedule(
        learning_rate,
        steps=steps,
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        clip_norm=clip_norm,
    )


def adamw_with_schedule(
    learning_rate, *, steps: int, warmup_steps: int, weight_decay: float, clip_norm: float
) -> optax.GradientTransformation:
    """``make_optimizer`` without its checks: ``learning_rate`` may be a traced scalar (one
    learning rate per replica under ``jax.vmap``, see ``attnjax.training.replicas``). The
    state it makes does not depend on ``learning_rate``."""
    shape = lambda peak: optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup_steps,
        decay_steps=max(steps, warmup_steps + 1),
        end_value=peak * 0.1,
    )
    if isinstance(learning_rate, int | float):
        schedule = shape(learning_rate)
    else:  # optax's schedule needs a concrete peak: scale the unit schedule by a traced one
        unit = shape(1.0)
        schedule = lambda count: learning_rate * unit(count)
    return optax.chain(
        optax.clip_by_global_norm(clip_norm),
        optax.adamw(schedule, weight_decay=weight_decay, mask=decay_mask),
    )


def decays(path: str) -> bool:
    """Whether the parameter at ``path`` ("blocks/0/attention/query_bias") gets weight decay:
    yes for kernels and embeddings, no for biases and norm scales."""
    name = path.rsplit("/", 1)[-1]
    return not (name in ("bias", "scale") or name.endswith("_bias"))


def decay_mask(params):
    """``params`` mapped to booleans by ``decays`` (the mask ``optax.adamw`` takes)."""

    return jax.tree_util.tree_map_with_path(lambda path, _: decays(path_string(path)), params)


class SplitModel(NamedTuple):
    """A model split once: train- and eval-mode graphdefs, parameters, other variables."""

    graphdef: nnx.GraphDef
    eval_graphdef: nnx.GraphDef
    params: nnx.State
    rest: nnx.State


def init_model(config: ModelConfig, seed: int) -> SplitModel:
    """Build ``DecoderLM(config)`` from ``seed`` (same seed, same parameters) and split it."""
    model = DecoderLM(config, rngs=nnx.Rngs(seed))
    model.eval()  # dropout off
    eval_graphdef = nnx.graphdef(model)
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return SplitModel(graphdef, eval_graphdef, params, rest)


def init_train_state(params, tx: optax.GradientTransformation) -> TrainState:
    """Step 0 with fresh optimizer state."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
