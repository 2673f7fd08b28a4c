"""The eight GPT-3 sizes of Brown et al. (2020), Table 2.1, for counting parameters and FLOPs.

Run (from the repository root):

    uv run python -m experiments.count_params --config=configs/gpt3.py:size=175b
    uv run python -m experiments.count_params --config=configs/gpt3.py:1.3b --json

Sizes: 125m, 350m, 760m, 1.3b, 2.7b, 6.7b, 13b, 175b (default 125m). All have a 2048-token
context, the GPT-2 vocabulary (50257), F = 4D, and GPT-2's layout: pre-LN with LayerNorm
biases, biases in attention and MLP, learned positions, tied embeddings, GELU (tanh).

Two rows of the table are inconsistent as printed, and are resolved so D = N * H:
1.3B lists 24 heads of width 128 for D = 2048 (24 x 128 = 3072); we use 16 heads of 128
(the released GPT-3-style 1.3B models, e.g. GPT-Neo, do the same; 24 x 128 would count 1.52B).
13B lists D = 5140 (40 x 128 = 5120); we keep D = 5140 and set head_dim = 128 explicitly.
Both stay within 2% of the paper's stated counts (checked in tests/test_accounting.py).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

# size: (num_layers, model_dim, num_heads, head_dim, paper's parameter count)
SIZES = {
    "125m": (12, 768, 12, 64, 125e6),
    "350m": (24, 1024, 16, 64, 350e6),
    "760m": (24, 1536, 16, 96, 760e6),
    "1.3b": (24, 2048, 16, 128, 1.3e9),
    "2.7b": (32, 2560, 32, 80, 2.7e9),
    "6.7b": (32, 4096, 32, 128, 6.7e9),
    "13b": (40, 5140, 40, 128, 13.0e9),
    "175b": (96, 12288, 96, 128, 175.0e9),
}
VARIANTS = ("size=350m", "size=1.3b")  # built abstractly by tests/test_configs.py
# (every size is counted and reconciled in tests/test_accounting.py; building the 96-layer
# 175B abstractly without attnjax.accounting's tracing workaround takes ~30 s)
PAPER_PARAMS = {size: values[-1] for size, values in SIZES.items()}


def parse_size(arg: str | None) -> str:
    """``"size=175b"``, ``"175b"``, ``"175B"`` → ``"175b"``; unknown sizes raise ValueError."""
    text = (arg or "125m").strip().lower()
    if text.startswith("size="):
        text = text[len("size=") :]
    if text not in SIZES:
        raise ValueError(f"size={text!r} is unknown; choose one of {list(SIZES)}")
    return text


def get_config(arg: str = "size=125m") -> ml_collections.ConfigDict:
    """The GPT-3 config for ``arg`` (``size=<name>`` or just ``<name>``), locked."""
    size = parse_size(arg)
    num_layers, model_dim, num_heads, head_dim, _ = SIZES[size]
    config = ml_collections.ConfigDict()
    config.name = f"gpt3-{size}"
    config.model = ml_collections.ConfigDict(
        dict(
            vocab_size=50257,
            max_seq_len=2048,
            model_dim=model_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=config_dict.placeholder(int),
            # Derived (D // N, 4D) unless the table needs it spelled out, so that overrides
            # such as --config.model.num_heads=48 keep the model width and F = 4D follows D.
            head_dim=config_dict.placeholder(int)
            if head_dim * num_heads == model_dim
            else head_dim,
            value_dim=config_dict.placeholder(int),
            mlp_dim=config_dict.placeholder(int),
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
    )
    config.count = ml_collections.ConfigDict(dict(seq_len=2048, batch_size=1))
    config.lock()
    return config
