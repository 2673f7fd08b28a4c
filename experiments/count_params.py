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


def _setting(flag, count, default: int) -> int:
    """``--<flag>`` if given (0 included), else ``config.count.<flag>``, else ``default``."""
    name = flag.name
    if flag.value is not None:
        source, value = f"--{name}", flag.value
    elif count.get(name) is not None:
        source, value = f"config.count.{name}", count.get(name)
    else:
        return default
    if value < 1:
        raise ValueError(f"{source} must be a positive int, got {value}")
    return value


def _count_settings(config) -> tuple[int, int]:
    count = config.get("count") or {}
    seq_len = _setting(_SEQ_LEN, count, config.model.max_seq_len)
    return seq_len, _setting(_BATCH, count, 1)


def build_report(model_config, convention: str, seq_len: int, batch_size: int) -> dict:
    """Everything the launcher prints, as one JSON-able dict. FLOPs follow the config's
    causality; for an encoder ``decode_flops_per_token`` and ``kv_cache_bytes`` are ``None``
    (no cached decoding) and ``unembedding`` is 0 with ``unembedding_kind`` ``"none"``."""
    from attnjax import accounting as acc

    report = acc.count_params(model_config, convention)
    reconciled = acc.reconcile(model_config)
    measured_total = sum(measured for _, measured in reconciled.values())
    decoder = model_config.architecture == "decoder"
    return {
        **report.to_dict(),
        "measured_total": measured_total,
        "full_total": acc.count_params(model_config, "full").total,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "causal": model_config.is_causal,
        "flops_per_token": acc.flops_per_token(model_config, seq_len),
        "flops_per_sequence": acc.flops_per_sequence(model_config, seq_len),
        "training_flops_per_token": acc.training_flops_per_token(model_config, seq_len),
        "decode_flops_per_token": (
            acc.decode_flops_per_token(model_config, seq_len) if decoder else None
        ),
        "param_bytes": acc.param_bytes(model_config),
        "attention_grid_bytes_per_layer": acc.attention_grid_bytes(
            model_config, batch_size, seq_len
        ),
        "kv_cache_bytes": (
            acc.kv_cache_bytes(model_config, batch_size, seq_len) if decoder else None
        ),
    }


def format_summary(values: dict) -> str:
    """The text after the parameter table; cached-decoding lines only for a decoder."""
    from attnjax.accounting import format_bytes

    b, t = values["batch_size"], values["seq_len"]
    grid = "causal, half the grid" if values["causal"] else "non-causal, full grid"
    decoding = values["decode_flops_per_token"] is not None
    return "\n".join([
        f"measured on the module (nnx.eval_shape): {values['measured_total']:,} parameters "
        f"(analytic full count {values['full_total']:,}: equal)",
        f"forward FLOPs per token (T={t}, {grid}): {values['flops_per_token']:,.0f}",
        f"forward FLOPs per sequence: {values['flops_per_sequence']:,}",
        f"training FLOPs per token (3 x forward): {values['training_flops_per_token']:,.0f}",
        *(
            [f"decode FLOPs per new token at context {t} (KV cache): "
             f"{values['decode_flops_per_token']:,}"]
            if decoding else []
        ),
        "parameter memory: "
        + ", ".join(f"{d} {format_bytes(n)}" for d, n in values["param_bytes"].items()),
        f"attention grid per layer (B={b}, N={values['num_heads']}, T=S={t}, float32): "
        f"{format_bytes(values['attention_grid_bytes_per_layer'])}",
        *(
            [f"KV cache (B={b}, S={t}, float32): {format_bytes(values['kv_cache_bytes'])}"]
            if values["kv_cache_bytes"] is not None else []
        ),
    ])  # fmt: skip


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if "model" not in config:
        raise ValueError("the config has no `model` section")
    seq_len, batch_size = _count_settings(config)  # before importing JAX: bad flags fail fast
    from attnjax import accounting as acc
    from attnjax.models import ModelConfig

    model_config = ModelConfig.from_config(config.model)
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
