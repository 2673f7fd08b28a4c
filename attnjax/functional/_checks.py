"""Argument checks shared by the functional modules; errors name the argument."""

from __future__ import annotations

import operator

import jax.numpy as jnp


def as_int(name: str, value, *, minimum: int | None = None) -> int:
    """``value`` as a Python int (NumPy and concrete JAX integers too); bools and floats fail."""
    try:
        if isinstance(value, bool) or str(getattr(value, "dtype", "")) == "bool":
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int, got {value!r}") from None
    if minimum is not None and number < minimum:
        qualifier = {0: "a non-negative int", 1: "a positive int"}.get(minimum, f">= {minimum}")
        raise ValueError(f"{name} must be {qualifier}, got {number}")
    return number


def per_example_lengths(name: str, lengths, batch: int | None = None):
    """``lengths`` as an int32 array of shape ``[B]`` (``B = batch`` if given)."""
    lengths = jnp.asarray(lengths)
    expected = "[B]" if batch is None else f"[B] = [{batch}]"
    if lengths.ndim != 1 or (batch is not None and lengths.shape[0] != batch):
        raise ValueError(f"{name} must have shape {expected}, got shape {lengths.shape}")
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"{name} must be integers, got dtype {lengths.dtype}")
    return lengths.astype(jnp.int32)
