"""The eight GPT-3 model sizes of Brown et al. (2020), Table 2.1, as attnjax model configs.

Run (from the repository root):

    uv run python -m experiments.count_params --config=configs/gpt3.py:size=175b
    uv run python -m experiments.count_params --config=configs/gpt3.py:175b --json
    uv run python -m experiments.count_params --config=configs/gpt3.py:size=13b \
        --config.model.num_heads=20 --convention=3b1b

Sizes: 125m (Small), 350m (Medium), 760m (Large), 1.3b (XL), 2.7b, 6.7b, 13b, 175b; the
default is 125m. All share n_ctx = 2048, the GPT-2 byte-level BPE vocabulary (50257 tokens),
d_ff = 4 d_model and GPT-2's layout: pre-LN with LayerNorm (scale and bias), biases on attention
and MLP, learned positions, unembedding tied to the token embedding, tanh-approximated GELU.
(GPT-3 alternates dense and locally banded sparse attention layers; that changes no parameter.)

Two rows of Table 2.1 do not multiply out. XL (1.3B) prints 24 heads of d_head = 128 with
d_model = 2048; 24 x 128 = 3072 would give 1.52B parameters, so this file uses 16 heads of 128
(= 2048, 1.315B, as the paper's count implies). 13B prints d_model = 5140 with 40 heads of 128
(= 5120): kept as printed, with ``head_dim=128`` given explicitly (12.94B). Every other size
leaves ``head_dim`` derived (d_model / n_heads), so ``--config.model.num_heads=48`` keeps the
width and changes the heads.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

# size: (n_layers, d_model, n_heads, d_head as printed, paper's parameter count)
SIZES = {
    "125m": (12, 768, 12, 64, 125e6),
    "350m": (24, 1024, 16, 64, 350e6),
    "760m": (24, 1536, 16, 96, 760e6),
    "1.3b": (24, 2048, 16, 128, 1.3e9),  # printed: 24 heads (see docstring)
    "2.7b": (32, 2560, 32, 80, 2.7e9),
    "6.7b": (32, 4096, 32, 128, 6.7e9),
    "13b": (40, 5140, 40, 128, 13.0e9),
    "175b": (96, 12288, 96, 128, 175.0e9),
}
ALIASES = {"small": "125m", "medium": "350m", "large": "760m", "xl": "1.3b"}

GPT2_LAYOUT = dict(
    vocab_size=50257,
    architecture="decoder",
    attention_bias=True,
    mlp_bias=True,
    norm="layernorm",
    norm_bias=True,
    norm_eps=1e-5,
    norm_position="pre",
    final_norm=True,
    activation="gelu_tanh",
    position_embedding="learned",
    tie_embeddings=True,
    init_std=0.02,
)


def parse_size(arg: str | None, sizes, aliases, default: str, family: str) -> str:
    """``"size=175b"``, ``"175b"`` or ``""`` (→ ``default``) → a key of ``sizes``."""
    arg = (arg or "").strip()
    name = arg.partition("=")[2] if arg.startswith("size=") else arg
    name = aliases.get(name.lower(), name.lower()) if name else default
    if name not in sizes:
        raise ValueError(
            f"unknown {family} size={name!r}; valid sizes: {', '.join(sizes)}"
            + (f" (aliases: {', '.join(aliases)})" if aliases else "")
        )
    return name


def model_config(layers: int, width: int, heads: int, max_seq_len: int, head_dim=None):
    """The ``model`` section: GPT-2 layout at the given sizes (``head_dim`` derived if None)."""
    return ml_collections.ConfigDict(
        dict(
            GPT2_LAYOUT,
            max_seq_len=max_seq_len,
            model_dim=width,
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=config_dict.placeholder(int),
            head_dim=config_dict.placeholder(int) if head_dim is None else head_dim,
            value_dim=config_dict.placeholder(int),
            mlp_dim=config_dict.placeholder(int),
        )
    )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The locked config of one GPT-3 size (``arg``: ``"size=175b"``, ``"175b"``; default 125m)."""
    size = parse_size(arg, SIZES, ALIASES, "125m", "GPT-3")
    layers, width, heads, head_dim, paper_count = SIZES[size]
    config = ml_collections.ConfigDict()
    config.name = f"gpt3-{size}"
    config.paper_params = paper_count
    derived = width % heads == 0 and width // heads == head_dim
    config.model = model_config(layers, width, heads, 2048, None if derived else head_dim)
    config.lock()
    return config
