"""Count-only sweep: parameters and FLOPs over a grid of head counts x layer counts.

Two ways to add heads: at fixed model width (``fixed="model_dim"``: H = D/N shrinks, the
attention weights per layer stay 4*D^2) or at fixed head width (``fixed="head_dim"``:
D = N*H grows, and with it the MLP and embeddings). Nothing is built; each point is a
``ModelConfig`` counted analytically.
"""

from __future__ import annotations

import csv
import pathlib
from collections.abc import Sequence
from typing import Any

from attnjax.accounting.flops import flops_per_token
from attnjax.accounting.params import count_params
from attnjax.models.config import ModelConfig

__all__ = ["SWEEP_COLUMNS", "count_sweep", "format_sweep_table", "point_config", "write_sweep_csv"]

FIXED = ("model_dim", "head_dim")
SWEEP_COLUMNS = (
    "heads",
    "layers",
    "model_dim",
    "head_dim",
    "per_head",
    "attention",
    "mlp",
    "embedding",
    "non_embedding",
    "total",
    "flops_per_token",
)


def _check_sizes(name: str, values: Sequence[int]) -> list[int]:
    values = list(values)
    if not values:
        raise ValueError(f"{name} must not be empty")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be positive ints, got {value!r}")
    return values


def point_config(base: ModelConfig, heads: int, layers: int, fixed: str) -> ModelConfig:
    """``base`` with ``heads`` heads and ``layers`` layers, holding ``fixed`` constant.

    Head counts are query heads; key/value heads follow them (``num_kv_heads=None``)."""
    if fixed == "model_dim":
        if base.model_dim % heads:
            raise ValueError(
                f"heads={heads} must divide model_dim={base.model_dim} with fixed='model_dim' "
                "(head width is model_dim / heads)"
            )
        return base.replace(num_heads=heads, num_layers=layers, num_kv_heads=None, head_dim=None)
    if fixed == "head_dim":
        head_dim = base.resolved_head_dim
        return base.replace(
            num_heads=heads,
            num_layers=layers,
            num_kv_heads=None,
            head_dim=None,
            model_dim=heads * head_dim,
            mlp_dim=None if base.mlp_dim is None else base.mlp_dim * heads // base.num_heads,
        )
    raise ValueError(f"fixed={fixed!r} is unknown; choose one of {list(FIXED)}")


def count_sweep(
    base_config: ModelConfig,
    heads: Sequence[int],
    layers: Sequence[int],
    fixed: str = "model_dim",
    seq_len: int | None = None,
    convention: str = "full",
) -> list[dict[str, Any]]:
    """One row per (heads, layers): the columns of ``SWEEP_COLUMNS`` (ints, FLOPs a float).

    ``seq_len`` (default ``base_config.max_seq_len``) sets the FLOPs' context length."""
    heads, layers = _check_sizes("heads", heads), _check_sizes("layers", layers)
    if fixed not in FIXED:
        raise ValueError(f"fixed={fixed!r} is unknown; choose one of {list(FIXED)}")
    seq_len = base_config.max_seq_len if seq_len is None else seq_len
    rows = []
    for num_heads in heads:
        for num_layers in layers:
            config = point_config(base_config, num_heads, num_layers, fixed)
            report = count_params(config, convention)
            rows.append(
                {
                    "heads": num_heads,
                    "layers": num_layers,
                    "model_dim": config.model_dim,
                    "head_dim": config.resolved_head_dim,
                    "per_head": report.per_head.total,
                    "attention": report.attention,
                    "mlp": report.mlp,
                    "embedding": report.embedding,
                    "non_embedding": report.non_embedding,
                    "total": report.total,
                    "flops_per_token": flops_per_token(config, seq_len, config.is_causal),
                }
            )
    return rows


def format_sweep_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as an aligned text table with thousands separators."""
    header = list(SWEEP_COLUMNS)
    body = [
        [f"{row[c]:,.0f}" if isinstance(row[c], float) else f"{row[c]:,}" for c in header]
        for row in rows
    ]
    widths = [max(len(x) for x in column) for column in zip(header, *body)]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in [header, *body]]
    return "\n".join(lines)


def write_sweep_csv(rows: Sequence[dict[str, Any]], path) -> pathlib.Path:
    """Write the rows as CSV (header = ``SWEEP_COLUMNS``); parent folders are created."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=SWEEP_COLUMNS)
        writer.writeheader()
        writer.writerows({c: row[c] for c in SWEEP_COLUMNS} for row in rows)
    return path
