"""Memory of a model: parameter bytes per dtype, attention-grid and KV-cache activations.

The attention grid of one layer holds ``B*N*T*S`` scores (and as many pattern entries); at 4
bytes each (float32) a 32k-token context with 32 heads is 128 GiB per layer for one sequence,
which is why long contexts need blocked (flash-style) attention that never materialises it.
"""

from __future__ import annotations

from attnjax.accounting.params import count_params
from attnjax.functional._checks import as_int
from attnjax.models.config import ModelConfig

__all__ = [
    "BYTES_PER_ELEMENT",
    "attention_grid_bytes",
    "format_bytes",
    "kv_cache_bytes",
    "param_bytes",
]

BYTES_PER_ELEMENT = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1}


def _bytes_per_element(dtype: str) -> int:
    if dtype not in BYTES_PER_ELEMENT:
        raise ValueError(f"dtype={dtype!r} is unknown; choose one of {list(BYTES_PER_ELEMENT)}")
    return BYTES_PER_ELEMENT[dtype]


def param_bytes(config: ModelConfig) -> dict[str, int]:
    """Bytes of all parameters (``"full"`` count) stored in each dtype."""
    total = count_params(config, "full").total
    return {dtype: total * size for dtype, size in BYTES_PER_ELEMENT.items()}


def attention_grid_bytes(
    config: ModelConfig, batch_size: int, seq_len: int, dtype: str = "float32"
) -> int:
    """Bytes of one layer's attention grid [B, N, T, S] (T = S = ``seq_len``) in ``dtype``."""
    batch_size = as_int("batch_size", batch_size, minimum=1)
    seq_len = as_int("seq_len", seq_len, minimum=1)
    return batch_size * config.num_heads * seq_len * seq_len * _bytes_per_element(dtype)


def kv_cache_bytes(
    config: ModelConfig, batch_size: int, seq_len: int, dtype: str = "float32"
) -> int:
    """Bytes of the KV cache for ``seq_len`` positions: keys [B,S,K,H] and values [B,S,K,R]
    in every layer."""
    batch_size = as_int("batch_size", batch_size, minimum=1)
    seq_len = as_int("seq_len", seq_len, minimum=1)
    per_position = config.resolved_num_kv_heads * (
        config.resolved_head_dim + config.resolved_value_dim
    )
    elements = config.num_layers * batch_size * seq_len * per_position
    return elements * _bytes_per_element(dtype)


def format_bytes(size: int | float) -> str:
    """``1536`` → ``"1.50 KiB"``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
