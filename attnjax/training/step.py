"""Pure, jitted train and eval steps: ``(state, batch) -> (state, metrics)``.

Loss and accuracy are averaged over the positions where ``loss_mask`` is 1 (the answers).
"""

from __future__ import annotations

import ctypes
import functools
import platform
import sys
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
    "compiler_options",
    "make_eval_step",
    "make_train_step",
    "masked_metrics",
    "pool_metrics",
    "reuse_freed_host_memory",
]

# XLA:CPU (jaxlib 0.10) hands dots, reductions and elementwise ops to YNNPACK by default; for
# train steps at nanoGPT's CPU sizes its own emitters and Eigen dots are faster: 1.1-1.2x per
# step at 6 layers x 384 wide, T=256, equal at 4 x 128, T=64 (2 cores, measured against the
# default in one process). The loss changes at the 1e-6 level (another summation order).
_CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compiler_options(backend: str | None = None) -> dict[str, Any] | None:
    """XLA options the train and eval steps are compiled with on ``backend`` (default: JAX's
    default backend): on CPU, no YNNPACK fusions if this jaxlib has that option; else none."""
    backend = jax.default_backend() if backend is None else backend
    return dict(_CPU_COMPILER_OPTIONS) if backend == "cpu" and _cpu_options_known() else None


@functools.cache
def _cpu_options_known() -> bool:
    """Whether this jaxlib accepts ``_CPU_COMPILER_OPTIONS`` (an experimental XLA flag)."""
    try:
        jax.jit(jnp.dot).lower(jnp.ones((2, 2)), jnp.ones((2, 2))).compile(_CPU_COMPILER_OPTIONS)
    except jax.errors.JaxRuntimeError:  # "No such compile option" or "not a valid enum value"
        return False
    return True


# glibc's mallopt parameters (malloc.h) and the heap top it may keep instead of trimming.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_KEEP_BYTES = 2**31 - 1


@functools.cache
def reuse_freed_host_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse instead of handing it back to the OS.

    XLA:CPU allocates a compiled step's scratch (all its temporaries: 38 MiB for nanoGPT's CPU
    recipe, 4 layers x 128 wide, T=64, batch 12) as one block per call. glibc serves blocks over
    32 MiB with fresh ``mmap`` pages and unmaps them when freed, so every step page-faults its
    whole scratch in again: that was ~20% of the step at that size (~3% at 6 x 384, T=256).
    Served from the heap (``M_MMAP_MAX=0``) and not trimmed below 2 GiB (``M_TRIM_THRESHOLD``),
    the next step reuses the same, already mapped pages.

    Process-wide and permanent: memory freed later stays with the process (and is reused by it).
    The train and eval steps call it on CPU unless made with ``reuse_host_memory=False``.
    Returns whether it applied (glibc on Linux only).
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))


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
    model = nnx.merge(graphdef, params, rest)
    if dropout_key is not None:
        nnx.reseed(model, default=dropout_key)
    with trusted_inputs():  # attnjax.data's tokens fit the model (checked by model_config_for)
        logits = model(batch.inputs)
    return masked_metrics(logits, batch.targets, batch.loss_mask)


def make_train_step(
    graphdef: nnx.GraphDef,
    rest,
    tx: optax.GradientTransformation,
    *,
    dropout_seed: int | None = None,
    state_sharding=None,
    reuse_host_memory: bool = True,
    platform: str | None = None,
) -> Callable:
    """The jitted step ``(state, batch) -> (state, metrics)``; ``state`` is donated.

    ``dropout_seed``: if set (models with dropout), the dropout RNG is reseeded each step from
    ``(dropout_seed, step)`` so a resumed run draws the same masks. ``state_sharding`` pins the
    output state to the input's sharding (for meshes). ``reuse_host_memory``: on CPU, call
    ``reuse_freed_host_memory()`` (process-wide; pass False to leave malloc as it is).
    ``platform``: the platform the step is compiled for when not JAX's default backend (a
    deviceless compile for ``"tpu"`` or ``"cuda"``); it picks the compiler options.
    """

    def step(state: TrainState, batch) -> tuple[TrainState, dict[str, jax.Array]]:
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

    out_shardings = None if state_sharding is None else (state_sharding, None)
    return _jit_step(
        step, reuse_host_memory, platform, donate_argnums=0, out_shardings=out_shardings
    )


def make_eval_step(graphdef: nnx.GraphDef, rest, *, reuse_host_memory: bool = True) -> Callable:
    """The jitted ``(params, batch) -> metrics``; ``graphdef`` of the model in eval mode.
    ``reuse_host_memory`` as in ``make_train_step``."""

    def step(params, batch):
        return _forward(graphdef, params, rest, batch)

    return _jit_step(step, reuse_host_memory)


def _jit_step(
    step: Callable, reuse_host_memory: bool, platform: str | None = None, **jit_kwargs
) -> Callable:
    """``jax.jit`` with the steps' compiler options, after the malloc setting on CPU."""
    platform = jax.default_backend() if platform is None else platform
    if reuse_host_memory and platform == "cpu":
        reuse_freed_host_memory()
    return jax.jit(step, compiler_options=compiler_options(platform), **jit_kwargs)
