"""Input checks shared by the layers and the models, eager and under ``jax.jit``.

A value check (a token id out of the vocabulary, a full cache) raises ``ValueError`` at once
when the values are concrete. When they are traced (``jit``, ``grad``, ``scan``), it raises at
run time instead: a ``lax.cond`` calls a host callback only when the check fails, and the
``jax.errors.JaxRuntimeError`` that the call then raises holds the ``ValueError`` message.

That ``cond`` costs a little on every run of the compiled program (and may read its predicate
on the host on GPU). Code whose inputs are valid by construction traces inside
``trusted_inputs()``, where traced checks compile to nothing: attnjax's train and eval steps
(fed by ``attnjax.data``, whose vocabulary is checked against the model's up front) and
``greedy_generate`` (prompt checked eagerly, cache sized to fit, tokens from an argmax).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["check_in_range", "check_positions", "error_if", "trusted_inputs"]

_CHECK_TRACED_VALUES = contextvars.ContextVar("attnjax_check_traced_values", default=True)


@contextlib.contextmanager
def trusted_inputs() -> Iterator[None]:
    """Within this block, value checks of *traced* inputs (token ids in range, room in a KV
    cache) compile to nothing; concrete values are still checked. It acts when a function is
    traced, so wrap the body of the function you ``jit`` (a compiled function keeps what it was
    traced with). Use it for a jitted step whose inputs are known to be valid."""
    token = _CHECK_TRACED_VALUES.set(False)
    try:
        yield
    finally:
        _CHECK_TRACED_VALUES.reset(token)


def error_if(failed, message: Callable[..., str], *operands) -> None:
    """Raise ``ValueError(message(*operands))`` if any element of ``failed`` is true.

    ``message`` gets the operands as NumPy arrays. Concrete ``failed`` raises now; traced
    ``failed`` raises when the compiled program runs (a ``JaxRuntimeError`` quoting the
    message). Under ``vmap`` the ``cond`` becomes a select that runs both branches, so the
    callback checks ``failed`` again before raising.
    """
    failed = jnp.any(failed)
    try:
        now = bool(failed)
    except jax.errors.ConcretizationTypeError:
        if not _CHECK_TRACED_VALUES.get():
            return
        callback = functools.partial(_raise_on_host, message)
        jax.lax.cond(failed, lambda: jax.debug.callback(callback, failed, *operands), lambda: None)
        return
    if now:
        raise ValueError(message(*(np.asarray(x) for x in operands)))


def _raise_on_host(message, failed, *operands) -> None:
    if np.any(failed):
        raise ValueError(message(*(np.asarray(x) for x in operands)))


def check_in_range(name: str, values, high: int, high_name: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless every one of ``values`` is in [0, high)."""
    values = jnp.asarray(values)
    if values.size == 0:
        return
    low_seen, high_seen = jnp.min(values), jnp.max(values)

    def message(low_seen, high_seen):
        low_seen, high_seen = np.min(low_seen), np.max(high_seen)  # batched under vmap
        bad = low_seen if low_seen < 0 else high_seen
        return f"{name} must be in [0, {high_name}={high}), got {bad}"

    error_if((low_seen < 0) | (high_seen >= high), message, low_seen, high_seen)


def check_positions(positions, batch: int, length: int) -> None:
    """Raise ``ValueError`` unless ``positions`` has shape [B, T] or [1, T]."""
    shape = jnp.shape(positions)
    if len(shape) != 2 or shape[1] != length or shape[0] not in (1, batch):
        raise ValueError(
            f"positions must have shape [B={batch}, T={length}] or [1, T={length}], got {shape}"
        )
