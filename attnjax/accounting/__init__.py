"""Parameter, FLOP and memory accounting: analytic counts, checked against the real module.

``count_params(config)`` → ``ParamReport`` (per head, per layer, per model; conventions
``"full"`` and ``"3b1b"``); ``measure_params(config)`` lists the module's leaves without
allocating it and ``reconcile(config)`` asserts both agree category by category;
``flops_per_token`` & co. count matmul FLOPs; ``param_bytes`` / ``attention_grid_bytes`` give
memory; ``count_sweep`` tabulates a heads x layers grid.
"""

from attnjax.accounting.flops import (
    attention_grid_flops_per_token,
    decode_flops_per_token,
    flops_per_sequence,
    flops_per_token,
    matmul_flops_per_token,
    training_flops_per_sequence,
    training_flops_per_token,
)
from attnjax.accounting.measured import (
    LeafInfo,
    ReconciliationError,
    format_leaf_table,
    measure_params,
    reconcile,
)
from attnjax.accounting.memory import (
    attention_grid_bytes,
    format_bytes,
    kv_cache_bytes,
    param_bytes,
)
from attnjax.accounting.params import (
    CONVENTIONS,
    EmbeddingParams,
    HeadParams,
    LayerParams,
    ParamReport,
    count_params,
    format_param_table,
)
from attnjax.accounting.sweep import (
    count_sweep,
    format_sweep_table,
    write_sweep_csv,
)

__all__ = [
    "CONVENTIONS",
    "EmbeddingParams",
    "HeadParams",
    "LayerParams",
    "LeafInfo",
    "ParamReport",
    "ReconciliationError",
    "attention_grid_bytes",
    "attention_grid_flops_per_token",
    "count_params",
    "count_sweep",
    "decode_flops_per_token",
    "flops_per_sequence",
    "flops_per_token",
    "format_bytes",
    "format_leaf_table",
    "format_param_table",
    "format_sweep_table",
    "kv_cache_bytes",
    "matmul_flops_per_token",
    "measure_params",
    "param_bytes",
    "reconcile",
    "training_flops_per_sequence",
    "training_flops_per_token",
    "write_sweep_csv",
]
