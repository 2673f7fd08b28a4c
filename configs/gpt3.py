"""The eight GPT-3 sizes of Brown et al. (2020), Table 2.1, for counting parameters and FLOPs.

Run (from the repository root):

    uv run python -m experiments.count_params --config=configs/gpt3.py:size=175b
    uv run python -m experiments.count_params --config=configs/gpt3.py:1.3b --json

Sizes: 125m, 350m, 760m, 1.3b, 2.7b, 6.7b, 13b, 175b (default 125m). All have a 2048-token
context, the GPT-2 vocabulary (50257), F = 4D, and GPT-2's layout: pre-LN with LayerNorm
biases, biases in attention and MLP, learned positions, tied embeddings, GELU (tanh).

Two rows of the table have N * H != D as printed:
1.3B lists 24 heads of width 128 for D = 2048 (24 x 128 = 3072); we use 16 heads of 128 so
that D = N * H (the released GPT-3-style 1.3B models, e.g. GPT-Neo, do the same; 24 x 128 would
count 1.52B). 13B lists D = 5140 with 40 heads of 128 (= 5120); we keep it as printed, which
ModelConfig allows (each head maps D -> 128; the output maps 5120 -> D), with head_dim = 128
set explicitly; the count table notes "attention width N x H = 5120 != D = 5140".
Both stay within 2% of the paper's stated counts (checked in tests/test_accounting.py).

Overrides: every size but 13b derives head_dim = D // N and F = 4D, so
``--config.model.num_heads=48`` keeps the model width D (an N that does not divide D is
refused, naming both). 13b keeps head_dim = 128 under a num_heads override, so N * H changes
(``num_heads=48`` gives 6144 != 5140, shown in the table); set ``--config.model.head_dim`` too
to choose it.
"""

from __future__ import annotations

import ml_collections

from configs import common

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
# 175B abstractly takes ~30 s on 2 cores)
PAPER_PARAMS = {size: values[-1] for size, values in SIZES.items()}


def parse_size(arg: str | None) -> str:
    """``"size=175b"``, ``"175b"``, ``"175B"`` → ``"175b"``; unknown sizes raise ValueError."""
    return common.parse_size(arg, SIZES, "125m")


def get_config(arg: str = "size=125m") -> ml_collections.ConfigDict:
    """The GPT-3 config for ``arg`` (``size=<name>`` or just ``<name>``), locked."""
    size = parse_size(arg)
    num_layers, model_dim, num_heads, head_dim, _ = SIZES[size]
    # Derived (D // N, 4D) where the table has D = N * H: a num_heads override keeps D and
    # F = 4D follows D. Only 13b (N * H = 5120 != D = 5140) spells out H = 128, which a
    # num_heads override then keeps (see the module docstring).
    spelled_out = {} if head_dim * num_heads == model_dim else {"head_dim": head_dim}
    model = common.model(
        common.GPT2_LAYOUT,
        vocab_size=50257,
        max_seq_len=2048,
        model_dim=model_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        **spelled_out,
    )
    return common.counting_config(f"gpt3-{size}", model, seq_len=2048)
