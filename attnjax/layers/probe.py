"""Looking inside a forward pass and editing it: what can be captured, and interventions.

Capture: a :class:`Recorder` names the activations to keep (``NAMES``); the block and attention
module ``put`` each one they compute. Interventions: an :class:`Interventions` pytree of arrays
(leading ``L`` axis at the model level, one layer's slice inside a block). Both are plain
values, so an intervention can be ``vmap``-ped, differentiated, or passed as a scan's ``xs``.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["ATTENTION_NAMES", "NAMES", "Interventions", "Recorder", "check_names"]

# Per layer (the model adds a leading L axis). K = key/value heads: under grouped-query
# attention k and v have K < N heads; query head n reads key/value head n // (N / K).
# An attention-only model (ModelConfig.attention_only) has no mlp_hidden / mlp_out.
NAMES: dict[str, str] = {
    "resid_pre": "[B, T, D] residual entering the block (after any residual patch)",
    "attn_out": "[B, T, D] attention output (sum of head_out over N, plus the output bias)",
    "resid_mid": "[B, T, D] residual after attention (post-LN: after its norm)",
    "mlp_hidden": "[B, T, F] MLP hidden activations (after the nonlinearity)",
    "mlp_out": "[B, T, D] MLP output",
    "resid_post": "[B, T, D] residual leaving the block",
    "q": "[B, T, N, H] queries (after RoPE), one per query head",
    "k": "[B, S, K, H] keys, one per key/value head (GQA: K < N)",
    "v": "[B, S, K, R] values (value-down), one per key/value head",
    "scores": "[B, N, T, S] scaled scores + bias, -inf where masked (float32)",
    "pattern": "[B, N, T, S] attention pattern, exp(scores - lse) (float32)",
    "lse": "[B, N, T] log-sum-exp of each row of scores (float32)",
    "moved": "[B, T, N, R] the values each head moves, pattern · v (after interventions)",
    "head_out": "[B, T, N, D] each head's output, moved · value-up (after interventions)",
}
ATTENTION_NAMES = ("q", "k", "v", "scores", "pattern", "lse", "moved", "head_out")


def check_names(names, known=tuple(NAMES)) -> tuple[str, ...]:
    """``names`` (a string or strings) as a tuple; unknown ones raise ``ValueError`` with the
    closest known names."""
    names = (names,) if isinstance(names, str) else tuple(names)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"names: unknown activation {name!r}{hint} (known: {list(known)})")
    return names


class Recorder:
    """Collects the named activations of one layer's call (a plain dict, filled while tracing)."""

    def __init__(self, names):
        self.names = frozenset(check_names(names))
        self.values: dict[str, Any] = {}

    def wants(self, *names: str) -> bool:
        return any(name in self.names for name in names)

    def put(self, name: str, value) -> None:
        if name in self.names:
            self.values[name] = value


@dataclasses.dataclass(frozen=True)
class Interventions:
    """Edits of a forward pass, as arrays (None = untouched). Shapes at the model level; a
    layer sees the same fields without the leading ``L``. ``B|1`` and ``T|1`` broadcast.

    - ``head_scale`` ``[L, N]``: multiplies each head's output (1 untouched, 0 zero-ablation).
    - ``head_weight`` ``[L, T|1, N]`` and ``head_source`` ``[L, B|1, T, N, R]``: each head's
      moved values become ``(1 - w) · moved + w · source`` (w = 1: patched from a source run's
      ``moved``, or its batch mean for mean-ablation). Head outputs are linear in ``moved``, so
      this patches ``head_out`` too.
    - ``pattern_weight`` ``[L, N]`` and ``pattern`` ``[L, B|1, N, T, S]``: a head's pattern
      becomes ``(1 - w) · pattern + w · override``.
    - ``resid_weight`` ``[L, T]`` and ``resid_source`` ``[L, B|1, T, D]``: the residual
      entering block l becomes ``(1 - w) · resid + w · source`` per position.
    """

    head_scale: Any = None
    head_weight: Any = None
    head_source: Any = None
    pattern_weight: Any = None
    pattern: Any = None
    resid_weight: Any = None
    resid_source: Any = None

    def __post_init__(self):
        for weight, source in (
            ("head_weight", "head_source"),
            ("pattern_weight", "pattern"),
            ("resid_weight", "resid_source"),
        ):
            if (getattr(self, weight) is None) != (getattr(self, source) is None):
                raise ValueError(f"interventions: {weight} and {source} must be given together")

    def layer(self, index: int) -> Interventions:
        """Layer ``index``'s slice (every array loses its leading L axis)."""
        return jax.tree.map(lambda a: a[index], self)

    def check(self, num_layers: int, num_heads: int) -> None:
        """Raise ``ValueError`` naming the field whose leading axes do not fit [L, ...N]."""
        for name in ("head_scale", "pattern_weight"):
            value = getattr(self, name)
            if value is not None and jnp.shape(value) != (num_layers, num_heads):
                raise ValueError(
                    f"interventions.{name} must have shape [L, N] = {[num_layers, num_heads]}, "
                    f"got {jnp.shape(value)}"
                )
        for name, value in dataclasses.asdict(self).items():
            if value is not None and (jnp.ndim(value) < 1 or jnp.shape(value)[0] != num_layers):
                raise ValueError(
                    f"interventions.{name} needs a leading L={num_layers} axis, got shape "
                    f"{jnp.shape(value)}"
                )

    # ---- applied inside a layer ---------------------------------------------------------

    def edit_residual(self, x):
        """``x`` [B, T, D] with the residual patch applied."""
        if self.resid_weight is None:
            return x
        w = jnp.asarray(self.resid_weight, x.dtype)[:, None]  # [T, 1]
        return x + w * (jnp.asarray(self.resid_source, x.dtype) - x)

    def edit_moved(self, moved, override_moved=None):
        """``moved`` [B, T, N, R] with pattern override (its moved values given), patch and
        scale applied."""
        if self.pattern_weight is not None:
            w = jnp.asarray(self.pattern_weight, moved.dtype)[:, None]  # [N, 1]
            moved = moved + w * (override_moved - moved)
        if self.head_weight is not None:
            w = jnp.asarray(self.head_weight, moved.dtype)[..., None]  # [T|1, N, 1]
            moved = moved + w * (jnp.asarray(self.head_source, moved.dtype) - moved)
        if self.head_scale is not None:
            moved = moved * jnp.asarray(self.head_scale, moved.dtype)[:, None]
        return moved


jax.tree_util.register_dataclass(
    Interventions, data_fields=[f.name for f in dataclasses.fields(Interventions)], meta_fields=[]
)
