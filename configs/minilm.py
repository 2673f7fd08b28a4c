"""The all-MiniLM-L6-v2 encoder size (BERT layout), for counting parameters.

Run (from the repository root):

    uv run python -m experiments.count_params --config=configs/minilm.py

Vocabulary 30522, D 384, 6 layers, 12 heads, F 1536, 512 positions, 2 token types, post-LN,
LayerNorm on the embeddings, biases everywhere, no final norm. attnjax's ``Encoder`` has no
pooler, so it counts 22,565,376 parameters: the checkpoint's 22,713,216 minus its pooler
(384 x 384 + 384 = 147,840).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """The MiniLM-L6 encoder config (``arg`` is unused), locked."""
    if arg:
        raise ValueError(f"configs/minilm.py takes no variant, got {arg!r}")
    config = ml_collections.ConfigDict()
    config.name = "all-MiniLM-L6-v2"
    config.model = ml_collections.ConfigDict(
        dict(
            architecture="encoder",
            vocab_size=30522,
            max_seq_len=512,
            model_dim=384,
            num_layers=6,
            num_heads=12,
            num_kv_heads=config_dict.placeholder(int),
            head_dim=config_dict.placeholder(int),
            value_dim=config_dict.placeholder(int),
            mlp_dim=1536,
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
    )
    config.count = ml_collections.ConfigDict(dict(seq_len=128, batch_size=1))
    config.lock()
    return config
