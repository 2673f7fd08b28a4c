"""``ModelConfig``: the one place a configuration becomes a model's shape."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from attnjax.functional import IMPLEMENTATIONS
from attnjax.functional._checks import (
    as_bool,
    as_int,
    as_positive_float,
    as_rate,
    check_choice,
    check_rope_width,
    head_sizes,
)
from attnjax.layers.mlp import ACTIVATIONS, NORMS

__all__ = ["ModelConfig"]

POSITION_EMBEDDINGS = ("learned", "sinusoidal", "rope", "alibi", "none")
NORM_POSITIONS = ("pre", "post")
ARCHITECTURES = ("decoder", "encoder")
DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots")  # see attnjax.models.scan
# scan_layers=None scans models of at least this many layers (see resolved_scan_layers).
SCAN_LAYERS_FROM = 8
FLAGS = (
    "attention_bias",
    "mlp_bias",
    "norm_bias",
    "final_norm",
    "embedding_norm",
    "tie_embeddings",
    "attention_only",
)

_CHOICES = {
    "architecture": ARCHITECTURES,
    "norm": NORMS,
    "norm_position": NORM_POSITIONS,
    "activation": tuple(ACTIVATIONS),
    "position_embedding": POSITION_EMBEDDINGS,
    "dtype": DTYPES,
    "param_dtype": DTYPES,
    "remat": REMAT_POLICIES,
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Every size and switch of a transformer. Frozen; validated on construction.

    Derived sizes (``None`` fields) follow the usual conventions: ``head_dim = model_dim //
    num_heads`` (then ``num_heads`` must divide ``model_dim``), ``num_kv_heads = num_heads``,
    ``value_dim = head_dim``, ``mlp_dim = 4 * model_dim``. Use the ``resolved_*`` properties.

    The defaults are a small GPT-style decoder (pre-LN, learned positions, tied unembedding,
    no biases in attention). ``attention_only=True`` drops every block's MLP and its norm (pre-LN
    ``x + attn(norm(x))``, post-LN ``norm(x + attn(x))``; Olsson et al.'s attention-only models,
    TransformerLens ``attn_only``); ``mlp_dim`` and ``mlp_bias`` are then unused and
    ``resolved_mlp_dim`` is 0. ``architecture="encoder"`` is a BERT-style encoder (post-LN,
    bidirectional attention, token-type embeddings).

    ``scan_layers`` stacks the L blocks' parameters on a leading L axis and runs them with
    ``jax.lax.scan`` (compile time independent of depth); None (default) scans models of at
    least ``SCAN_LAYERS_FROM`` layers. ``remat`` (``"none"``, ``"full"``, ``"dots"``)
    rematerialises each block in the backward pass (see ``attnjax.models.scan``).
    """

    vocab_size: int = 256
    max_seq_len: int = 128
    model_dim: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int | None = None
    head_dim: int | None = None
    value_dim: int | None = None
    mlp_dim: int | None = None
    architecture: str = "decoder"
    attention_bias: bool = False
    mlp_bias: bool = True
    norm: str = "layernorm"
    norm_bias: bool = True
    norm_eps: float = 1e-5
    norm_position: str = "pre"
    final_norm: bool = True
    embedding_norm: bool = False
    activation: str = "gelu"
    position_embedding: str = "learned"
    rope_base: float = 10_000.0
    tie_embeddings: bool = True
    type_vocab_size: int = 0
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    attention_implementation: str | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    init_std: float = 0.02
    scan_layers: bool | None = None
    remat: str = "none"
    attention_only: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "max_seq_len", "num_layers"):
            self._set(name, as_int(name, getattr(self, name), minimum=1))
        self._set("type_vocab_size", as_int("type_vocab_size", self.type_vocab_size, minimum=0))
        if self.mlp_dim is not None:
            self._set("mlp_dim", as_int("mlp_dim", self.mlp_dim, minimum=1))
        head_sizes(self.model_dim, self.num_heads, self.num_kv_heads, self.head_dim, self.value_dim)
        for name in ("model_dim", "num_heads", "num_kv_heads", "head_dim", "value_dim"):
            if getattr(self, name) is not None:  # checked above; stored as Python ints
                self._set(name, as_int(name, getattr(self, name)))
        for name, choices in _CHOICES.items():
            check_choice(name, getattr(self, name), choices)
        if self.position_embedding == "rope":
            check_rope_width(self.resolved_head_dim, setting="position_embedding='rope'")
        if self.position_embedding == "sinusoidal" and self.model_dim % 2:
            raise ValueError(
                f"position_embedding='sinusoidal' needs an even model_dim, got {self.model_dim}"
            )
        if self.attention_implementation is not None:
            check_choice("attention_implementation", self.attention_implementation, IMPLEMENTATIONS)
        for name in FLAGS:
            as_bool(name, getattr(self, name))
        if self.scan_layers is not None:
            as_bool("scan_layers", self.scan_layers)
        for name in ("dropout_rate", "attention_dropout_rate"):
            as_rate(name, getattr(self, name))
        for name in ("norm_eps", "rope_base"):
            as_positive_float(name, getattr(self, name))

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # frozen: normalise a checked field in place

    # ---- derived sizes -----------------------------------------------------------------------

    @property
    def resolved_num_kv_heads(self) -> int:
        """K: key/value heads."""
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def resolved_head_dim(self) -> int:
        """H: query/key width per head."""
        return self.model_dim // self.num_heads if self.head_dim is None else self.head_dim

    @property
    def resolved_value_dim(self) -> int:
        """R: value-down width per head."""
        return self.resolved_head_dim if self.value_dim is None else self.value_dim

    @property
    def resolved_mlp_dim(self) -> int:
        """F: MLP hidden width (0 with ``attention_only``: the blocks have no MLP)."""
        if self.attention_only:
            return 0
        return 4 * self.model_dim if self.mlp_dim is None else self.mlp_dim

    @property
    def resolved_scan_layers(self) -> bool:
        """Whether the blocks are stacked and run as a scan (``scan_layers``; when None, from
        ``SCAN_LAYERS_FROM`` layers on)."""
        if self.scan_layers is None:
            return self.num_layers >= SCAN_LAYERS_FROM
        return self.scan_layers

    @property
    def is_causal(self) -> bool:
        return self.architecture == "decoder"

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def parameter_dtype(self):
        return jnp.dtype(self.param_dtype)

    # ---- construction ------------------------------------------------------------------------

    def replace(self, **changes: Any) -> ModelConfig:
        _check_field_names(changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Any) -> ModelConfig:
        """From a mapping or ``ml_collections.ConfigDict`` (e.g. ``cfg.model``).

        Unknown keys raise ``ValueError`` naming the key and the closest field.
        """
        values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        _check_field_names(values)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))


def _check_field_names(values: Mapping[str, Any]) -> None:
    for name in values:
        if name not in _FIELDS:
            close = difflib.get_close_matches(name, _FIELDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"ModelConfig has no field {name!r}{hint}")
