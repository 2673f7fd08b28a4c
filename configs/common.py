"""Model pieces the config files share (as big_vision's ``configs/common.py`` does).

Plain ml_collections: nothing here imports JAX or attnjax, so a config file is parsed before
the launcher sets JAX up.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

# Sizes ``ModelConfig`` derives when unset (K = N, H = D // N, R = H, F = 4D): placeholders,
# None by default and an int when overridden (``--config.model.head_dim=64``).
DERIVED_SIZES = ("num_kv_heads", "head_dim", "value_dim", "mlp_dim")

# GPT-2's layout (GPT-3 keeps it): pre-LN with LayerNorm biases, biases in attention and MLP,
# learned positions, tied embeddings, GELU (tanh).
GPT2_LAYOUT = dict(
    attention_bias=True,
    mlp_bias=True,
    norm="layernorm",
    norm_bias=True,
    norm_position="pre",
    final_norm=True,
    activation="gelu_tanh",
    position_embedding="learned",
    tie_embeddings=True,
)

# BERT's layout: post-LN, LayerNorm (eps 1e-12) on the embeddings, biases everywhere, two token
# types, no final norm, exact GELU.
BERT_LAYOUT = dict(
    architecture="encoder",
    type_vocab_size=2,
    attention_bias=True,
    mlp_bias=True,
    norm="layernorm",
    norm_bias=True,
    norm_eps=1e-12,
    norm_position="post",
    final_norm=False,
    embedding_norm=True,
    activation="gelu",
    position_embedding="learned",
    tie_embeddings=True,
)


def model(layout: dict, **sizes) -> ml_collections.ConfigDict:
    """A ``model`` section: ``sizes``, the derived sizes not given (placeholders), ``layout``."""
    fields = dict(sizes)
    for name in DERIVED_SIZES:
        fields.setdefault(name, config_dict.placeholder(int))
    return ml_collections.ConfigDict({**fields, **layout})


def counting_config(
    name: str, model_section: ml_collections.ConfigDict, seq_len: int
) -> ml_collections.ConfigDict:
    """A locked config to count: ``name``, ``model`` and ``count`` (FLOPs and memory at
    ``seq_len`` tokens, batch 1; ``--seq_len``/``--batch_size`` override)."""
    config = ml_collections.ConfigDict()
    config.name = name
    config.model = model_section
    config.count = ml_collections.ConfigDict(dict(seq_len=seq_len, batch_size=1))
    config.lock()
    return config


def parse_size(arg: str | None, sizes, default: str) -> str:
    """``"size=X"``, ``"X"`` (any case) or empty (``default``) → a key of ``sizes``; an unknown
    size raises ``ValueError`` listing the known ones."""
    text = (arg or default).strip().lower()
    if text.startswith("size="):
        text = text[len("size=") :]
    if text not in sizes:
        raise ValueError(f"size={text!r} is unknown; choose one of {list(sizes)}")
    return text
