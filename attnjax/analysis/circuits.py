"""QK and OV circuits of each head as factored [D, D] matrices (Elhage et al. 2021).

Per query head n (kv head k = n // G under grouped-query attention):

- QK circuit ``W_Q[n] W_K[k]ᵀ`` [D, D], rank <= H: the bilinear form behind the grid,
  ``score(x_t, x_s) = x_t W_Q W_Kᵀ x_sᵀ / sqrt(H)`` (biases and RoPE left out).
- OV circuit ``W_V↓[k] W_V↑[n]`` [D, D], rank <= R: what the head writes to the residual
  stream for each unit of attention paid to a token — the low-rank value map.

A ``FactoredCircuit`` keeps the factors ``left`` [N, D, r] and ``right`` [N, r, D] and never
needs the D x D product: its SVD comes from QR of the factors and the SVD of an r x r matrix
(float64 NumPy: the parameters are small and on the host after one copy).

Effective rank, two definitions (both per head):

- ``effective_rank``: ``exp(entropy(s / Σ s))`` of the singular values s (Roy & Vetterli
  2007): 1 for a rank-one map, r when all r singular values are equal, in between otherwise.
- ``threshold_rank``: the number of singular values above ``rtol * max(s)`` (default 1%).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from jaxtyping import Float, Int

from attnjax.functional._types import ArrayT
from attnjax.layers import MultiHeadAttention
from attnjax.models.scan import layer_block, num_blocks

__all__ = [
    "FactoredCircuit",
    "attention_module",
    "circuit_spectra",
    "effective_rank",
    "ov_circuit",
    "qk_circuit",
    "threshold_rank",
]


def _svd_of_product(a: np.ndarray, b: np.ndarray):
    """SVD of ``a @ b`` per head without forming it: a = Qa Ra, bᵀ = Qb Rb, so
    a b = Qa (Ra Rbᵀ) Qbᵀ and only the small r x r middle needs an SVD. a [N, D, r],
    b [N, r, D]; float64 NumPy on the host (batched LAPACK, no compilation)."""
    qa, ra = np.linalg.qr(a)
    qb, rb = np.linalg.qr(np.swapaxes(b, 1, 2))
    u, s, vt = np.linalg.svd(ra @ np.swapaxes(rb, 1, 2))
    return qa @ u, s, vt @ np.swapaxes(qb, 1, 2)


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

    def dense(self) -> Float[np.ndarray, "N D D"]:
        """The full matrices (D x D per head, float64); for small D or checking."""
        return np.einsum("ndr,nre->nde", self._left64, self._right64)

    def svd(self):
        """``(u [N, D, r'], s [N, r'], vt [N, r', D])`` with r' = min(D, r), from the factors
        (float64 NumPy)."""
        return _svd_of_product(self._left64, self._right64)

    @property
    def _left64(self) -> np.ndarray:
        return np.asarray(self.left, np.float64)

    @property
    def _right64(self) -> np.ndarray:
        return np.asarray(self.right, np.float64)

    def singular_values(self) -> Float[np.ndarray, "N r"]:
        """Singular values per head, largest first."""
        return self.svd()[1]

    def effective_rank(self) -> Float[np.ndarray, " N"]:
        return effective_rank(self.singular_values())

    def threshold_rank(self, rtol: float = 0.01) -> Int[np.ndarray, " N"]:
        return threshold_rank(self.singular_values(), rtol)


def effective_rank(singular_values: Float[ArrayT, "*batch r"]) -> Float[np.ndarray, "*batch"]:
    """``exp`` of the entropy of the normalized singular values (0 for an all-zero map)."""
    s = np.abs(np.asarray(singular_values, np.float64))
    total = s.sum(axis=-1, keepdims=True)
    p = s / np.where(total > 0, total, 1.0)
    entropy = -np.sum(p * np.log(np.where(p > 0, p, 1.0)), axis=-1)
    return np.where(total[..., 0] > 0, np.exp(entropy), 0.0)


def threshold_rank(
    singular_values: Float[ArrayT, "*batch r"], rtol: float = 0.01
) -> Int[np.ndarray, "*batch"]:
    """How many singular values exceed ``rtol`` times the largest."""
    if not 0.0 <= rtol < 1.0:
        raise ValueError(f"rtol must be in [0, 1), got {rtol}")
    s = np.abs(np.asarray(singular_values, np.float64))
    largest = s.max(axis=-1, keepdims=True)
    return np.sum((s > rtol * largest) & (s > 0), axis=-1)


def attention_module(model: Any, layer: int | None = None) -> MultiHeadAttention:
    """The ``MultiHeadAttention`` of ``model.blocks[layer]`` (a decoder or an encoder), or
    ``model`` itself when it already is one."""
    if isinstance(model, MultiHeadAttention):
        return model
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError(f"model {type(model).__name__} has no transformer blocks")
    count = num_blocks(blocks)
    if layer is None or not -count <= layer < count:
        raise ValueError(f"layer={layer} is out of range for a model of {count} layers")
    return layer_block(blocks, layer).attention


def _kv_head_of_each_query_head(attention: MultiHeadAttention) -> np.ndarray:
    group = attention.num_heads // attention.num_kv_heads
    return np.arange(attention.num_heads) // group


# The factors are gathered on the host (NumPy): a few small copies, no device dispatch.
def qk_circuit(model: Any, layer: int | None = None) -> FactoredCircuit:
    """``W_Q[n] W_K[n // G]ᵀ`` per query head: left [N, D, H], right [N, H, D]."""
    attention = attention_module(model, layer)
    query = np.transpose(np.asarray(attention.query[...]), (1, 0, 2))  # [N, D, H]
    key = np.asarray(attention.key[...])[:, _kv_head_of_each_query_head(attention)]  # [D,N,H]
    return FactoredCircuit(query, np.transpose(key, (1, 2, 0)))


def ov_circuit(model: Any, layer: int | None = None) -> FactoredCircuit:
    """``W_V↓[n // G] W_V↑[n]`` per query head: left [N, D, R], right [N, R, D]."""
    attention = attention_module(model, layer)
    down = np.asarray(attention.value_down[...])[:, _kv_head_of_each_query_head(attention)]
    return FactoredCircuit(np.transpose(down, (1, 0, 2)), np.asarray(attention.value_up[...]))


def circuit_spectra(model: Any) -> dict[str, Float[np.ndarray, "L N r"]]:
    """Singular values of every layer's QK (``"qk"``, [L, N, H]) and OV (``"ov"``,
    [L, N, R]) circuits, all layers in one batched SVD."""
    layers = range(num_blocks(model.blocks))
    spectra = {}
    for name, circuit in (("qk", qk_circuit), ("ov", ov_circuit)):
        circuits = [circuit(model, i) for i in layers]
        left = np.concatenate([c.left for c in circuits])  # [L * N, D, r]
        right = np.concatenate([c.right for c in circuits])
        values = FactoredCircuit(left, right).singular_values()
        spectra[name] = values.reshape(len(circuits), -1, values.shape[-1])
    return spectra
