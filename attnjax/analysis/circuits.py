"""QK and OV circuits of each head as factored [D, D] matrices (Elhage et al. 2021).

Per query head n (kv head k = n // G under grouped-query attention):

- QK circuit ``W_Q[n] W_K[k]ᵀ`` [D, D], rank <= H: the bilinear form behind the grid,
  ``score(x_t, x_s) = x_t W_Q W_Kᵀ x_sᵀ / sqrt(H)`` (biases and RoPE left out).
- OV circuit ``W_V↓[k] W_V↑[n]`` [D, D], rank <= R: what the head writes to the residual
  stream for each unit of attention paid to a token — the low-rank value map.

A ``FactoredCircuit`` keeps the factors ``left`` [N, D, r] and ``right`` [N, r, D] and never
needs the D x D product: its SVD comes from QR of the factors and the SVD of an r x r matrix.

Effective rank, two definitions (both per head):

- ``effective_rank``: ``exp(entropy(s / Σ s))`` of the singular values s (Roy & Vetterli
  2007): 1 for a rank-one map, r when all r singular values are equal, in between otherwise.
- ``threshold_rank``: the number of singular values above ``rtol * max(s)`` (default 1%).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Float, Int

from attnjax.functional._types import ArrayT
from attnjax.layers import MultiHeadAttention

__all__ = [
    "FactoredCircuit",
    "attention_module",
    "circuit_spectra",
    "effective_rank",
    "ov_circuit",
    "qk_circuit",
    "threshold_rank",
]


def _svd_of_product(a: Float[ArrayT, "D r"], b: Float[ArrayT, "r D"]):
    """SVD of ``a @ b`` without forming it: a = Qa Ra, bᵀ = Qb Rb, a b = Qa (Ra Rbᵀ) Qbᵀ."""
    qa, ra = jnp.linalg.qr(a)
    qb, rb = jnp.linalg.qr(b.T)
    u, s, vt = jnp.linalg.svd(ra @ rb.T)
    return qa @ u, s, vt @ qb.T


_svd_per_head = jax.jit(jax.vmap(_svd_of_product))


@dataclasses.dataclass(frozen=True)
class FactoredCircuit:
    """Per-head [D, D] matrices ``left[n] @ right[n]``, kept as factors.

    ``left`` [N, D, r], ``right`` [N, r, D].
    """

    left: Float[ArrayT, "N D r"]
    right: Float[ArrayT, "N r D"]

    def __post_init__(self):
        left, right = self.left, self.right
        if left.ndim != 3 or right.ndim != 3 or left.shape[0] != right.shape[0]:
            raise ValueError(
                f"left [N,D,r] and right [N,r,D] do not fit: {left.shape}, {right.shape}"
            )
        if left.shape[2] != right.shape[1] or left.shape[1] != right.shape[2]:
            raise ValueError(
                f"left [N,D,r] and right [N,r,D] do not fit: {left.shape}, {right.shape}"
            )

    @property
    def num_heads(self) -> int:
        return self.left.shape[0]

    def dense(self) -> Float[ArrayT, "N D D"]:
        """The full matrices (D x D per head); for small D or checking."""
        return jnp.einsum("NDr,NrE->NDE", self.left, self.right)

    def svd(self):
        """``(u [N, D, r'], s [N, r'], vt [N, r', D])`` with r' = min(D, r), from the factors."""
        return _svd_per_head(
            jnp.asarray(self.left, jnp.float32), jnp.asarray(self.right, jnp.float32)
        )

    def singular_values(self) -> Float[ArrayT, "N r"]:
        """Singular values per head, largest first."""
        return self.svd()[1]

    def effective_rank(self) -> Float[ArrayT, " N"]:
        return effective_rank(self.singular_values())

    def threshold_rank(self, rtol: float = 0.01) -> Int[ArrayT, " N"]:
        return threshold_rank(self.singular_values(), rtol)


def effective_rank(singular_values: Float[ArrayT, "*batch r"]) -> Float[ArrayT, "*batch"]:
    """``exp`` of the entropy of the normalized singular values (0 for an all-zero map)."""
    s = jnp.abs(jnp.asarray(singular_values, jnp.float32))
    total = s.sum(axis=-1, keepdims=True)
    p = s / jnp.where(total > 0, total, 1.0)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)
    return jnp.where(total[..., 0] > 0, jnp.exp(entropy), 0.0)


def threshold_rank(
    singular_values: Float[ArrayT, "*batch r"], rtol: float = 0.01
) -> Int[ArrayT, "*batch"]:
    """How many singular values exceed ``rtol`` times the largest."""
    if not 0.0 <= rtol < 1.0:
        raise ValueError(f"rtol must be in [0, 1), got {rtol}")
    s = jnp.abs(jnp.asarray(singular_values))
    largest = s.max(axis=-1, keepdims=True)
    return jnp.sum((s > rtol * largest) & (s > 0), axis=-1)


def attention_module(model: Any, layer: int | None = None) -> MultiHeadAttention:
    """The ``MultiHeadAttention`` of ``model.blocks[layer]`` (a decoder or an encoder), or
    ``model`` itself when it already is one."""
    if isinstance(model, MultiHeadAttention):
        return model
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError(f"model {type(model).__name__} has no transformer blocks")
    if layer is None or not -len(blocks) <= layer < len(blocks):
        raise ValueError(f"layer={layer} is out of range for a model of {len(blocks)} layers")
    return blocks[layer].attention


def _kv_head_of_each_query_head(attention: MultiHeadAttention) -> jax.Array:
    group = attention.num_heads // attention.num_kv_heads
    return jnp.arange(attention.num_heads) // group


def qk_circuit(model: Any, layer: int | None = None) -> FactoredCircuit:
    """``W_Q[n] W_K[n // G]ᵀ`` per query head: left [N, D, H], right [N, H, D]."""
    attention = attention_module(model, layer)
    query = jnp.transpose(attention.query[...], (1, 0, 2))  # [N, D, H]
    key = attention.key[...][:, _kv_head_of_each_query_head(attention)]  # [D, N, H]
    return FactoredCircuit(query, jnp.transpose(key, (1, 2, 0)))


def ov_circuit(model: Any, layer: int | None = None) -> FactoredCircuit:
    """``W_V↓[n // G] W_V↑[n]`` per query head: left [N, D, R], right [N, R, D]."""
    attention = attention_module(model, layer)
    down = attention.value_down[...][:, _kv_head_of_each_query_head(attention)]  # [D, N, R]
    return FactoredCircuit(jnp.transpose(down, (1, 0, 2)), attention.value_up[...])


def circuit_spectra(model: Any) -> dict[str, Float[ArrayT, "L N r"]]:
    """Singular values of every layer's QK (``"qk"``, [L, N, H]) and OV (``"ov"``,
    [L, N, R]) circuits."""
    layers = range(len(model.blocks))
    return {
        "qk": jnp.stack([qk_circuit(model, i).singular_values() for i in layers]),
        "ov": jnp.stack([ov_circuit(model, i).singular_values() for i in layers]),
    }
