"""Pure, jitted train and eval steps: ``(state, batch) -> (state, metrics)``.

Loss and accuracy are averaged over the positions where ``loss_mask`` is 1 (the answers).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jaxtyping import Float, Int

from attnjax.functional._types import ArrayT
from attnjax.layers import trusted_inputs
from attnjax.training.state import TrainState

__all__ = [
    "evaluate_batch",
    "make_eval_step",
    "make_train_step",
    "masked_metrics",
    "pool_metrics",
    "update",
]


def masked_metrics(
    logits: Float[ArrayT, "B T V"],
    targets: Int[ArrayT, "B T"],
    loss_mask: Float[ArrayT, "B T"],
) -> dict[str, jax.Array]:
    """Mean cross-entropy and accuracy over masked positions; ``sequence_accuracy`` counts a
    sequence right only if all its masked positions are right (over rows with any).

    Returns scalars ``loss``, ``accuracy``, ``sequence_accuracy``, ``count`` (the number of
    masked positions, the weight of ``loss`` and ``accuracy``) and ``sequences`` (the number
    of rows with any, the weight of ``sequence_accuracy``); ``pool_metrics`` combines the
    metrics of several batches with these weights. With no masked position at all, every mean
    is over nothing: ``loss``, ``accuracy`` and ``sequence_accuracy`` are 0 (never NaN, never
    a perfect score) and ``count`` is 0, which tells this case apart.
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    mask = loss_mask.astype(jnp.float32)
    answered = mask > 0
    wrong = answered & (jnp.argmax(logits, axis=-1) != targets)
    has_answer = answered.any(axis=1)
    count, sequences = mask.sum(), has_answer.sum().astype(jnp.float32)
    sequences_right = (has_answer & ~wrong.any(axis=1)).sum()
    return {
        "loss": (nll * mask).sum() / jnp.maximum(count, 1.0),
        "accuracy": (answered & ~wrong).sum() / jnp.maximum(count, 1.0),
        "sequence_accuracy": sequences_right / jnp.maximum(sequences, 1.0),
        "count": count,
        "sequences": sequences,
    }


# Each mean of ``masked_metrics`` and the count it is a mean over.
_WEIGHTS = {"loss": "count", "accuracy": "count", "sequence_accuracy": "sequences"}


def pool_metrics(per_batch: Sequence[Mapping[str, float | jax.Array]]) -> dict[str, float]:
    """The ``masked_metrics`` of several batches as if of one batch holding them all: each
    mean weighted by its count (batches with more answers weigh more), counts summed. A mean
    over no answer at all is 0, as in ``masked_metrics``."""
    totals = {name: sum(float(m[name]) for m in per_batch) for name in set(_WEIGHTS.values())}
    pooled = dict(totals)
    for name, weight in _WEIGHTS.items():
        weighted = sum(float(m[name]) * float(m[weight]) for m in per_batch)
        pooled[name] = weighted / totals[weight] if totals[weight] > 0 else 0.0
    return pooled


def _forward(graphdef, params, rest, batch, dropout_key=None):
    # Fresh Variables for ``rest`` (a closed-over State): the ones it holds were made outside
    # this trace, and reseeding or a dropout draw may not mutate those (TraceContextError).
    model = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, rest))
    if dropout_key is not None:
        # match_shape: a stream stacked over layers (scan_layers) gets one key per layer
        nnx.reseed(model, policy="match_shape", default=dropout_key)
    with trusted_inputs():  # attnjax.data's tokens fit the model (checked by model_config_for)
        logits = model(batch.inputs)
    return masked_metrics(logits, batch.targets, batch.loss_mask)


def update(
    graphdef: nnx.GraphDef,
    rest,
    tx: optax.GradientTransformation,
    state: TrainState,
    batch,
    dropout_seed=None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step of ``state`` on ``batch`` (pure, not jitted): the body of
    ``make_train_step``'s step, and, vmapped over replicas, of ``attnjax.training.replicas``.
    ``dropout_seed`` (int or traced int scalar) seeds dropout from ``(dropout_seed, step)``."""
    key = None
    if dropout_seed is not None:
        key = jax.random.fold_in(jax.random.key(dropout_seed), state.step)

    def loss_fn(params):
        metrics = _forward(graphdef, params, rest, batch, key)
        return metrics["loss"], metrics

    grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    return TrainState(state.step + 1, params, opt_state), metrics


def evaluate_batch(graphdef: nnx.GraphDef, params, rest, batch) -> dict[str, jax.Array]:
    """``masked_metrics`` of the model ``(graphdef, params, rest)`` on ``batch`` (pure)."""
    return _forward(graphdef, params, rest, batch)


def make_train_step(
    graphdef: nnx.GraphDef,
    rest,
    tx: optax.GradientTransformation,
    *,
    dropout_seed: int | None = None,
    state_sharding=None,
    compiler_options: Mapping[str, Any] | None = None,
) -> Callable:
    """The jitted step ``(state, batch) -> (state, metrics)``; ``state`` is donated.

    ``dropout_seed``: if set (models with dropout), the dropout RNG is reseeded each step from
    ``(dropout_seed, step)`` so a resumed run draws the same masks. ``state_sharding`` pins the
    output state to the input's sharding (for meshes). ``compiler_options``: XLA options for
    ``jax.jit`` (default: XLA's own), e.g. ``attnjax.perf.cpu.compiler_options(platform)``.
    Building the step changes nothing outside it.
    """

    def step(state: TrainState, batch) -> tuple[TrainState, dict[str, jax.Array]]:
        return update(graphdef, rest, tx, state, batch, dropout_seed)

    out_shardings = None if state_sharding is None else (state_sharding, None)
    return jax.jit(
        step, donate_argnums=0, out_shardings=out_shardings, compiler_options=compiler_options
    )


def make_eval_step(
    graphdef: nnx.GraphDef, rest, *, compiler_options: Mapping[str, Any] | None = None
) -> Callable:
    """The jitted ``(params, batch) -> metrics``; ``graphdef`` of the model in eval mode.
    ``compiler_options`` as in ``make_train_step``."""

    def step(params, batch):
        return evaluate_batch(graphdef, params, rest, batch)

    return jax.jit(step, compiler_options=compiler_options)
