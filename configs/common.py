"""Model pieces the config files share (as big_vision's ``configs/common.py`` does).

Plain ml_collections, plus ``ModelConfig``'s field list and defaults (read when a model section
is built, so a ``model`` section always has every field and each is settable as
``--config.model.<field>``).
"""

from __future__ import annotations

import dataclasses
import types
import typing

import ml_collections
from ml_collections import config_dict

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
    """A ``model`` section with every ``ModelConfig`` field: its defaults, then ``layout``,
    then ``sizes``. Fields whose default is None (the sizes ``ModelConfig`` derives: K = N,
    H = D // N, R = H, F = 4D; ``attention_implementation``) are typed placeholders, None until
    overridden (``--config.model.head_dim=64``)."""
    from attnjax.models.config import ModelConfig  # its defaults are the one source

    types_of = typing.get_type_hints(ModelConfig)
    fields = {
        field.name: (
            config_dict.placeholder(_not_none(types_of[field.name]))
            if field.default is None
            else field.default
        )
        for field in dataclasses.fields(ModelConfig)
    }
    unknown = sorted(set(layout).union(sizes) - set(fields))
    if unknown:
        raise ValueError(f"ModelConfig has no field(s) {unknown}")
    return ml_collections.ConfigDict({**fields, **layout, **sizes})


def _not_none(annotation) -> type:
    """``int`` of ``int | None``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def mesh(data: int = -1, fsdp: int = 1, model: int = 1) -> ml_collections.ConfigDict:
    """The ``mesh`` section: devices along ``data`` (-1: all left over), ``fsdp`` (parameters
    and optimizer state split ZeRO-3 style, batch too) and ``model`` (heads, MLP width); see
    ``attnjax.training.sharding``."""
    return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, model=model))


def counting_config(
    name: str, model_section: ml_collections.ConfigDict, seq_len: int
) -> ml_collections.ConfigDict:
    """A locked config to count: ``name``, ``model`` and ``count`` (FLOPs and memory at
    ``seq_len`` tokens, batch 1; ``--seq_len``/``--batch_size`` override), and the ``mesh``
    ``experiments.compile_check`` lays its train step out on (``--config.mesh.fsdp=16``)."""
    config = ml_collections.ConfigDict()
    config.name = name
    config.model = model_section
    config.count = ml_collections.ConfigDict(dict(seq_len=seq_len, batch_size=1))
    config.mesh = mesh()
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
