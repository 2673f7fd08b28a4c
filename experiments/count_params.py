"""Count a model's parameters, FLOPs and memory without building it.

    uv run python -m experiments.count_params --config=configs/gpt3.py:size=175b
    uv run python -m experiments.count_params --config=configs/gpt3.py:size=175b --json
    uv run python -m experiments.count_params --config=configs/gpt2.py:small --convention=3b1b
    uv run python -m experiments.count_params --config=configs/gpt3.py:175b \
        --config.model.num_heads=48 --leaves

Prints the per-head view first, then the per-layer and per-model breakdown, the count measured
on the real module (``nnx.eval_shape``: shapes only, nothing allocated), FLOPs and memory.
``--json`` prints one JSON object instead.
"""

from __future__ import annotations

import json

from absl import flags
from ml_collections import config_flags

from experiments.common import run

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/gpt3.py", "Config file with a `model` section, e.g. configs/gpt3.py:175b.",
    lock_config=True,
)  # fmt: skip
_CONVENTION = flags.DEFINE_enum(
    "convention", "full", ["full", "3b1b"], "full: every parameter; 3b1b: weights only."
)
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of tables.")
_LEAVES = flags.DEFINE_bool("leaves", False, "Also print the per-leaf table of the module.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", None, "Sequence length for FLOPs/memory.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Batch size for activation memory.")


def _count_settings(config) -> tuple[int, int]:
    count = config.get("count") or {}
    seq_len = _SEQ_LEN.value or count.get("seq_len") or config.model.max_seq_len
    batch_size = _BATCH.value or count.get("batch_size") or 1
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"--{name} must be a positive int, got {value}")
    return seq_len, batch_size


def build_report(model_config, convention: str, seq_len: int, batch_size: int) -> dict:
    """Everything the launcher prints, as one JSON-able dict."""
    from attnjax import accounting as acc

    report = acc.count_params(model_config, convention)
    reconciled = acc.reconcile(model_config)
    measured_total = sum(measured for _, measured in reconciled.values())
    causal = model_config.is_causal
    return {
        **report.to_dict(),
        "measured_total": measured_total,
        "full_total": acc.count_params(model_config, "full").total,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "flops_per_token": acc.flops_per_token(model_config, seq_len, causal),
        "flops_per_sequence": acc.flops_per_sequence(model_config, seq_len, causal),
        "training_flops_per_token": acc.training_flops_per_token(model_config, seq_len, causal),
        "decode_flops_per_token": acc.decode_flops_per_token(model_config, seq_len),
        "param_bytes": acc.param_bytes(model_config),
        "attention_grid_bytes_per_layer": acc.attention_grid_bytes(
            model_config, batch_size, seq_len
        ),
        "kv_cache_bytes": acc.kv_cache_bytes(model_config, batch_size, seq_len),
    }


def format_summary(values: dict) -> str:
    from attnjax.accounting import format_bytes

    b, t = values["batch_size"], values["seq_len"]
    lines = [
        f"measured on the module (nnx.eval_shape): {values['measured_total']:,} parameters "
        f"(analytic full count {values['full_total']:,}: equal)",
        f"forward FLOPs per token (T={t}): {values['flops_per_token']:,.0f}",
        f"forward FLOPs per sequence: {values['flops_per_sequence']:,}",
        f"training FLOPs per token (3 x forward): {values['training_flops_per_token']:,.0f}",
        f"decode FLOPs per new token at context {t} (KV cache): "
        f"{values['decode_flops_per_token']:,}",
        "parameter memory: "
        + ", ".join(f"{d} {format_bytes(n)}" for d, n in values["param_bytes"].items()),
        f"attention grid per layer (B={b}, N={values['num_heads']}, T=S={t}, float32): "
        f"{format_bytes(values['attention_grid_bytes_per_layer'])}",
        f"KV cache (B={b}, S={t}, float32): {format_bytes(values['kv_cache_bytes'])}",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    from attnjax import accounting as acc
    from attnjax.models import ModelConfig

    config = _CONFIG.value
    if "model" not in config:
        raise ValueError("the config has no `model` section")
    model_config = ModelConfig.from_config(config.model)
    seq_len, batch_size = _count_settings(config)
    values = build_report(model_config, _CONVENTION.value, seq_len, batch_size)
    if _JSON.value:
        print(json.dumps(values))
        return
    name = config.get("name", "model")
    print(f"{name}: {values['total']:,} parameters ({_CONVENTION.value} convention)\n")
    print(acc.format_param_table(acc.count_params(model_config, _CONVENTION.value)))
    print()
    print(format_summary(values))
    if _LEAVES.value:
        print()
        print(acc.format_leaf_table(acc.measure_params(model_config)))


if __name__ == "__main__":
    run(main)
