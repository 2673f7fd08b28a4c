"""Argument checks: the one home of every validation rule in attnjax (the ground floor: every
layer may import it). Each check raises ``ValueError`` naming the argument and returns the
value, converted (``as_*``).

A rule is checked where its value is owned: ``ModelConfig`` for a config, a layer's
constructor for its arguments, ``dot_product_attention`` for arrays; each calls the rule here.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable

import jax.numpy as jnp


def as_int(name: str, value, *, minimum: int | None = None) -> int:
    """``value`` as a Python int (NumPy and concrete JAX integers too); bools and floats fail."""
    try:
        if isinstance(value, bool) or str(getattr(value, "dtype", "")) == "bool":
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be {_an_int(minimum)}, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be {_an_int(minimum)}, got {number}")
    return number


def _an_int(minimum: int | None) -> str:
    if minimum is None:
        return "an int"
    return "a positive int" if minimum == 1 else f"an int >= {minimum}"


def as_ints(name: str, values: Iterable, *, minimum: int = 1) -> list[int]:
    """``values`` as a non-empty list of ints, each ``>= minimum``."""
    values = list(values)
    try:
        numbers = [as_int(name, value, minimum=minimum) for value in values]
    except ValueError:
        numbers = []
    if not numbers:
        kind = "positive ints" if minimum == 1 else f"ints >= {minimum}"
        raise ValueError(f"{name}={values} must be a non-empty list of {kind}")
    return numbers


def as_rate(name: str, value) -> float:
    """``value`` as a float in [0, 1) (a dropout rate)."""
    if _not_real(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


def as_positive_float(name: str, value) -> float:
    """``value`` as a positive finite float (an epsilon, a RoPE base)."""
    if _not_real(value) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def as_bool(name: str, value) -> bool:
    """``value`` if it is ``True`` or ``False`` (not 0 or 1)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value, choices: Iterable[str]) -> None:
    """``value`` must be one of ``choices`` (a name: a norm, an implementation...)."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is unknown; choose one of {list(choices)}")


def head_sizes(
    model_dim: int,
    num_heads: int,
    num_kv_heads: int | None = None,
    head_dim: int | None = None,
    value_dim: int | None = None,
) -> tuple[int, int, int]:
    """The resolved ``(K, H, R)`` of an attention block of width D with N query heads.

    Defaults: K = N, H = D // N (then N must divide D), R = H. K must divide N."""
    model_dim = as_int("model_dim", model_dim, minimum=1)
    num_heads = as_int("num_heads", num_heads, minimum=1)
    if num_kv_heads is not None:
        as_int("num_kv_heads", num_kv_heads, minimum=1)
    for name, value in (("head_dim", head_dim), ("value_dim", value_dim)):
        if value is not None:
            as_int(name, value, minimum=1)
    if head_dim is None and model_dim % num_heads:
        raise ValueError(
            f"num_heads={num_heads} must divide model_dim={model_dim} (head_dim is derived as "
            "model_dim // num_heads; set head_dim to decouple them)"
        )
    num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    check_kv_heads(num_kv_heads, num_heads)
    head_dim = model_dim // num_heads if head_dim is None else head_dim
    return num_kv_heads, head_dim, head_dim if value_dim is None else value_dim


def check_kv_heads(num_kv_heads: int, num_heads: int, *, key: str = "", query: str = "") -> None:
    """K key/value heads must divide N query heads (each serves G = N/K). ``key``/``query``
    (e.g. ``" (key (2, 5, 3, 8))"``) say where the counts came from."""
    if num_kv_heads == 0 or num_heads % num_kv_heads:
        raise ValueError(
            f"num_kv_heads={num_kv_heads}{key} must divide num_heads={num_heads}{query}"
        )


def check_rope_width(width: int, name: str = "head_dim", *, setting: str = "RoPE") -> None:
    """RoPE rotates channel pairs, so the width it rotates must be even."""
    if width % 2:
        raise ValueError(f"{setting} needs an even {name}, got {width}")


def _not_real(value) -> bool:
    return isinstance(value, bool) or not isinstance(value, numbers.Real)


def per_example_lengths(name: str, lengths, batch: int | None = None):
    """``lengths`` as an int32 array of shape ``[B]`` (``B = batch`` if given)."""
    lengths = jnp.asarray(lengths)
    expected = "[B]" if batch is None else f"[B] = [{batch}]"
    if lengths.ndim != 1 or (batch is not None and lengths.shape[0] != batch):
        raise ValueError(f"{name} must have shape {expected}, got shape {lengths.shape}")
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ValueError(f"{name} must be integers, got dtype {lengths.dtype}")
    return lengths.astype(jnp.int32)
