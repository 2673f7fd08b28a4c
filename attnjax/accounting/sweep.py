"""Count-only sweep: parameters and FLOPs over a grid of head counts x layer counts.

Each point is ``attnjax.models.point_config`` (the same models the train sweep trains):
at ``fixed="model_dim"`` the head width D/N shrinks and the attention weights per layer stay
4·D²; at ``fixed="head_dim"`` the head width stays and attention grows with the head count
(model width, MLP and embeddings unchanged). Nothing is built; each point is counted
analytically.
"""

from __future__ import annotations

import csv
import pathlib
from collections.abc import Sequence
from typing import Any

from attnjax.accounting.flops import flops_per_token
from attnjax.accounting.params import count_params
from attnjax.functional._checks import as_ints
from attnjax.models.config import ModelConfig
from attnjax.models.grid import point_config

__all__ = ["SWEEP_COLUMNS", "count_sweep", "format_sweep_table", "write_sweep_csv"]

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


def count_sweep(
    base_config: ModelConfig,
    heads: Sequence[int],
    layers: Sequence[int],
    fixed: str = "model_dim",
    seq_len: int | None = None,
    convention: str = "full",
    head_dim: int | None = None,
) -> list[dict[str, Any]]:
    """One row per (heads, layers): the columns of ``SWEEP_COLUMNS`` (ints, FLOPs a float).

    Points are ``attnjax.models.point_config(base_config, heads, layers, fixed, head_dim)``.
    ``seq_len`` (default ``base_config.max_seq_len``) sets the FLOPs' context length."""
    heads, layers = as_ints("heads", heads), as_ints("layers", layers)
    seq_len = base_config.max_seq_len if seq_len is None else seq_len
    rows = []
    for num_heads in heads:
        for num_layers in layers:
            config = point_config(base_config, num_heads, num_layers, fixed, head_dim)
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
