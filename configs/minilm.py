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

from configs import common


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """The MiniLM-L6 encoder config (``arg`` is unused), locked."""
    if arg:
        raise ValueError(f"configs/minilm.py takes no variant, got {arg!r}")
    model = common.model(
        common.BERT_LAYOUT,
        vocab_size=30522,
        max_seq_len=512,
        model_dim=384,
        num_layers=6,
        num_heads=12,
        mlp_dim=1536,
    )
    return common.counting_config("all-MiniLM-L6-v2", model, seq_len=128)
