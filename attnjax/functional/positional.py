"""Positional information: sinusoidal embeddings, rotary embeddings (RoPE), ALiBi bias."""

from __future__ import annotations

import math

import jax.numpy as jnp
from jaxtyping import Float, Int

from attnjax.functional._checks import as_int, check_rope_width
from attnjax.functional._types import ArrayT, IntLike

__all__ = ["alibi_bias", "alibi_slopes", "apply_rope", "sinusoidal_embedding"]


def sinusoidal_embedding(
    positions: Int[ArrayT, "*T"], dim: IntLike, *, base: float = 10_000.0
) -> Float[ArrayT, "*T D"]:
    """Fixed sin/cos position vectors of "Attention Is All You Need" (sin on even channels).

    ``PE[p, 2i] = sin(p / base^(2i/D))``, ``PE[p, 2i+1] = cos(p / base^(2i/D))``.
    """
    dim = as_int("dim", dim)
    if dim < 2 or dim % 2:
        raise ValueError(f"dim must be a positive even int, got {dim}")
    positions = jnp.asarray(positions, dtype=jnp.float32)
    inv_freq = base ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)  # [D/2]
    angles = positions[..., None] * inv_freq
    return jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(*angles.shape[:-1], dim)


def apply_rope(
    x: Float[ArrayT, "*B T heads H"],
    positions: Int[ArrayT, "*#B T"],
    *,
    base: float = 10_000.0,
) -> Float[ArrayT, "*B T heads H"]:
    """Rotary position embedding (RoFormer), "rotate half" layout as in GPT-NeoX and Llama.

    Channel ``i`` and ``i + H/2`` form a pair rotated by angle ``position · base^(-2i/H)``, so
    ``q(m)·k(n)`` depends on positions only through ``m - n``. Apply to queries and keys.
    """
    width = x.shape[-1]
    check_rope_width(width, f"head width H (x shape {x.shape})")
    half = width // 2
    inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)  # [H/2]
    angles = jnp.asarray(positions, jnp.float32)[..., None] * inv_freq  # [..., T, H/2]
    cos, sin = jnp.cos(angles)[..., None, :], jnp.sin(angles)[..., None, :]  # [..., T, 1, H/2]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


def alibi_slopes(num_heads: IntLike) -> Float[ArrayT, " N"]:
    """Head-specific slopes of ALiBi (Press et al. 2022): a geometric sequence from 2^(-8/N).

    For a head count that is not a power of two, the paper's interleaving rule is used.
    """
    num_heads = as_int("num_heads", num_heads, minimum=1)

    def power_of_two_slopes(n: int) -> list[float]:
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_two_slopes(closest)
    if closest < num_heads:
        slopes += power_of_two_slopes(2 * closest)[0::2][: num_heads - closest]
    return jnp.asarray(slopes, dtype=jnp.float32)


def alibi_bias(
    num_heads: IntLike,
    query_length: IntLike,
    key_length: IntLike | None = None,
    *,
    offset: IntLike | ArrayT = 0,
) -> Float[ArrayT, "1 N T S"]:
    """ALiBi bias ``-slope_n · |i + offset - j|``, to pass as ``bias=`` to attention.

    With a causal mask this is the paper's bias; without one it penalises distance both ways.
    """
    query_length = as_int("query_length", query_length, minimum=1)
    key_length = as_int("key_length", query_length if key_length is None else key_length, minimum=1)
    query_pos = jnp.arange(query_length)[:, None] + offset
    key_pos = jnp.arange(key_length)[None, :]
    distance = jnp.abs(query_pos - key_pos).astype(jnp.float32)  # [T, S]
    return (-alibi_slopes(num_heads)[:, None, None] * distance)[None]
