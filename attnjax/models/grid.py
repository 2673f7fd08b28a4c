"""The heads × layers sweep grid: which model each grid point is.

One rule for both sweeps: the count sweep (``attnjax.accounting.count_sweep``) and the train
sweep (``attnjax.training.sweep``) build every point with :func:`point_config`, so the same
grid counts and trains the same models.

Two ways to add heads, both at fixed model width D (the residual stream, the MLP and the
embeddings never change with the head count):

- ``fixed="model_dim"``: head width H = D / N shrinks as N grows (N must divide D). The
  attention weights per layer stay 4·D², so the parameter total does not depend on N.
- ``fixed="head_dim"``: head width H stays (``head_dim``, default the base's), so the
  attention width N·H grows with N and may differ from D: only attention grows.
"""

from __future__ import annotations

from attnjax.functional._checks import check_choice
from attnjax.models.config import ModelConfig

__all__ = ["FIXED", "point_config"]

FIXED = ("model_dim", "head_dim")


def point_config(
    base: ModelConfig,
    heads: int,
    layers: int,
    fixed: str = "model_dim",
    head_dim: int | None = None,
) -> ModelConfig:
    """``base`` with ``heads`` query heads and ``layers`` layers, holding ``fixed`` constant.

    Key/value heads follow the query heads (``num_kv_heads=None``); model width, MLP width,
    value width and everything else stay the base's. ``head_dim`` (H at ``fixed="head_dim"``;
    default ``base.resolved_head_dim``) is ignored at ``fixed="model_dim"``. A point that
    cannot be built (N not dividing D at fixed model width) raises ``ValueError`` naming it.
    """
    check_choice("fixed", fixed, FIXED)
    if fixed == "head_dim":
        head_dim = base.resolved_head_dim if head_dim is None else head_dim
    else:
        head_dim = None  # derived: model_dim // heads
    return base.replace(num_heads=heads, num_layers=layers, num_kv_heads=None, head_dim=head_dim)
