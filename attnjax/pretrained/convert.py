"""Hugging Face configs and weights → ``ModelConfig`` and attnjax parameter trees.

Supported ``model_type``: ``bert`` (BERT-family encoders such as MiniLM, → ``Encoder``) and
``gpt2`` (→ ``DecoderLM``). Every parameter of the attnjax module must come from a tensor of
the checkpoint with the expected shape; anything else is a ``ValueError`` naming the file,
the tensor and the expected shape.

Layouts: PyTorch ``Linear`` weights are [out, in] (BERT); GPT-2's ``Conv1D`` weights are
already [in, out]. Per-head tensors are the columns ``h*H:(h+1)*H`` of a projection, so
``query`` [D, N*H] reshapes to [D, N, H] and the output projection [N*R, D] to ``value_up``
[N, R, D].
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from attnjax.functional._checks import as_int
from attnjax.models.config import ModelConfig
from attnjax.models.encoder import BERT_SETTINGS

__all__ = ["SUPPORTED_MODEL_TYPES", "convert_weights", "model_config"]

HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}

GPT2_SETTINGS = dict(
    architecture="decoder",
    norm="layernorm",
    norm_position="pre",
    embedding_norm=False,
    final_norm=True,
    attention_bias=True,
    mlp_bias=True,
    position_embedding="learned",
    type_vocab_size=0,
)

Params = dict[str, Any]


# ---- configs ---------------------------------------------------------------------------------


class _Config:
    """Reads fields of a config.json, naming the file in every error."""

    def __init__(self, values: Mapping[str, Any], path: pathlib.Path):
        self.values, self.path = values, path

    def get(self, name: str, default: Any = ...) -> Any:
        if name in self.values and self.values[name] is not None:
            return self.values[name]
        if default is ...:
            raise ValueError(f"{self.path} has no {name!r} (needed for its model_type)")
        return default

    def int(self, name: str, default: Any = ...) -> int:
        return as_int(f"{self.path}: {name}", self.get(name, default), minimum=1)

    def activation(self, name: str, default: str) -> str:
        value = self.get(name, default)
        if value not in HF_ACTIVATIONS:
            raise ValueError(
                f"{self.path}: {name}={value!r} is not supported; expected one of "
                f"{sorted(HF_ACTIVATIONS)}"
            )
        return HF_ACTIVATIONS[value]

    def require(self, name: str, expected: Any, default: Any) -> None:
        value = self.get(name, default)
        if value != expected:
            raise ValueError(f"{self.path}: {name}={value!r} is not supported (only {expected!r})")


def _bert_config(cfg: _Config) -> ModelConfig:
    cfg.require("position_embedding_type", "absolute", "absolute")
    cfg.require("is_decoder", False, False)
    return ModelConfig(
        **{
            **BERT_SETTINGS,
            "vocab_size": cfg.int("vocab_size"),
            "model_dim": cfg.int("hidden_size"),
            "num_layers": cfg.int("num_hidden_layers"),
            "num_heads": cfg.int("num_attention_heads"),
            "mlp_dim": cfg.int("intermediate_size"),
            "max_seq_len": cfg.int("max_position_embeddings"),
            "type_vocab_size": cfg.int("type_vocab_size", 2),
            "norm_eps": float(cfg.get("layer_norm_eps", 1e-12)),
            "activation": cfg.activation("hidden_act", "gelu"),
        }
    )


def _gpt2_config(cfg: _Config) -> ModelConfig:
    cfg.require("scale_attn_weights", True, True)
    cfg.require("scale_attn_by_inverse_layer_idx", False, False)
    model_dim = cfg.int("n_embd")
    return ModelConfig(
        **{
            **GPT2_SETTINGS,
            "vocab_size": cfg.int("vocab_size"),
            "model_dim": model_dim,
            "num_layers": cfg.int("n_layer"),
            "num_heads": cfg.int("n_head"),
            "mlp_dim": cfg.int("n_inner", 4 * model_dim),
            "max_seq_len": cfg.int("n_positions", cfg.values.get("n_ctx", ...)),
            "norm_eps": float(cfg.get("layer_norm_epsilon", 1e-5)),
            "activation": cfg.activation("activation_function", "gelu_new"),
            "tie_embeddings": bool(cfg.get("tie_word_embeddings", True)),
        }
    )


_CONFIGS: dict[str, Callable[[_Config], ModelConfig]] = {"bert": _bert_config, "gpt2": _gpt2_config}
SUPPORTED_MODEL_TYPES = tuple(_CONFIGS)


def model_config(hf_config: Mapping[str, Any], path: pathlib.Path) -> ModelConfig:
    """The ``ModelConfig`` of a Hugging Face ``config.json`` (read from ``path``)."""
    model_type = hf_config.get("model_type")
    if model_type not in _CONFIGS:
        raise ValueError(
            f"{path}: model_type={model_type!r} is not supported; attnjax loads "
            f"{list(SUPPORTED_MODEL_TYPES)} (BERT-family encoders, GPT-2-family decoders)"
        )
    try:
        return _CONFIGS[model_type](_Config(hf_config, path))
    except ValueError as error:
        message = str(error)
        raise ValueError(message if str(path) in message else f"{path}: {message}") from None


# ---- weights ---------------------------------------------------------------------------------


class _Tensors:
    """Tensors of a checkpoint under a key prefix; every lookup checks the shape."""

    def __init__(self, tensors: Mapping[str, np.ndarray], path: pathlib.Path, marker: str):
        self.tensors, self.path = tensors, path
        self.prefix = _find_prefix(tensors, marker, path)

    def has(self, name: str) -> bool:
        return self.prefix + name in self.tensors

    def __call__(self, name: str, shape: tuple[int, ...], *alternatives: str) -> np.ndarray:
        for candidate in (name, *alternatives):
            key = self.prefix + candidate
            if key in self.tensors:
                value = self.tensors[key]
                if tuple(value.shape) != tuple(shape):
                    raise ValueError(
                        f"{self.path}: tensor {key!r} has shape {tuple(value.shape)}, expected "
                        f"{tuple(shape)} from config.json"
                    )
                return np.asarray(value, np.float32)
        raise ValueError(
            f"{self.path}: missing tensor {self.prefix + name!r} (shape {tuple(shape)}); "
            "the file does not match config.json"
        )


def _find_prefix(tensors: Mapping[str, np.ndarray], marker: str, path: pathlib.Path) -> str:
    """The key prefix (``""``, ``"bert."``, ``"transformer."`` ...) in front of ``marker``."""
    prefixes = sorted(key[: -len(marker)] for key in tensors if key.endswith(marker))
    prefixes = [p for p in prefixes if p == "" or p.endswith(".")]
    if not prefixes:
        raise ValueError(
            f"{path}: no tensor named '*{marker}'; the file does not hold the weights of the "
            "model_type in config.json"
        )
    return prefixes[0]


def _layernorm(get: _Tensors, name: str, dim: int) -> Params:
    scale = get(f"{name}.weight", (dim,), f"{name}.gamma")
    bias = get(f"{name}.bias", (dim,), f"{name}.beta")
    return {"scale": scale, "bias": bias}


def _bert_weights(get: _Tensors, config: ModelConfig) -> Params:
    d, n, h, f = (
        config.model_dim,
        config.num_heads,
        config.resolved_head_dim,
        config.resolved_mlp_dim,
    )

    def linear_in_heads(name: str) -> tuple[np.ndarray, np.ndarray]:  # [out, in] → [D, N, H]
        weight = get(f"{name}.weight", (n * h, d))
        return weight.T.reshape(d, n, h), get(f"{name}.bias", (n * h,)).reshape(n, h)

    def block(i: int) -> Params:
        p = f"encoder.layer.{i}."
        query, query_bias = linear_in_heads(p + "attention.self.query")
        key, key_bias = linear_in_heads(p + "attention.self.key")
        value, value_bias = linear_in_heads(p + "attention.self.value")
        output = get(p + "attention.output.dense.weight", (d, n * h))
        return {
            "attention": {
                "query": query,
                "key": key,
                "value_down": value,
                "value_up": output.T.reshape(n, h, d),
                "query_bias": query_bias,
                "key_bias": key_bias,
                "value_bias": value_bias,
                "output_bias": get(p + "attention.output.dense.bias", (d,)),
            },
            "attention_norm": _layernorm(get, p + "attention.output.LayerNorm", d),
            "mlp": {
                "up": {
                    "kernel": get(p + "intermediate.dense.weight", (f, d)).T,
                    "bias": get(p + "intermediate.dense.bias", (f,)),
                },
                "down": {
                    "kernel": get(p + "output.dense.weight", (d, f)).T,
                    "bias": get(p + "output.dense.bias", (d,)),
                },
            },
            "mlp_norm": _layernorm(get, p + "output.LayerNorm", d),
        }

    e = "embeddings."
    return {
        "embeddings": {
            "token": {"embedding": get(e + "word_embeddings.weight", (config.vocab_size, d))},
            "position": {
                "embedding": get(e + "position_embeddings.weight", (config.max_seq_len, d))
            },
            "token_type": {
                "embedding": get(e + "token_type_embeddings.weight", (config.type_vocab_size, d))
            },
            "norm": _layernorm(get, e + "LayerNorm", d),
        },
        "blocks": {i: block(i) for i in range(config.num_layers)},
    }


def _gpt2_weights(get: _Tensors, config: ModelConfig) -> Params:
    d, n, h, f = (
        config.model_dim,
        config.num_heads,
        config.resolved_head_dim,
        config.resolved_mlp_dim,
    )

    def block(i: int) -> Params:
        p = f"h.{i}."
        # Conv1D weights are [in, out]; c_attn's output columns are [query | key | value].
        qkv = get(p + "attn.c_attn.weight", (d, 3 * d))
        qkv_bias = get(p + "attn.c_attn.bias", (3 * d,))
        query, key, value = (w.reshape(d, n, h) for w in np.split(qkv, 3, axis=1))
        query_bias, key_bias, value_bias = (b.reshape(n, h) for b in np.split(qkv_bias, 3))
        return {
            "attention": {
                "query": query,
                "key": key,
                "value_down": value,
                "value_up": get(p + "attn.c_proj.weight", (d, d)).reshape(n, h, d),
                "query_bias": query_bias,
                "key_bias": key_bias,
                "value_bias": value_bias,
                "output_bias": get(p + "attn.c_proj.bias", (d,)),
            },
            "attention_norm": _layernorm(get, p + "ln_1", d),
            "mlp": {
                "up": {
                    "kernel": get(p + "mlp.c_fc.weight", (d, f)),
                    "bias": get(p + "mlp.c_fc.bias", (f,)),
                },
                "down": {
                    "kernel": get(p + "mlp.c_proj.weight", (f, d)),
                    "bias": get(p + "mlp.c_proj.bias", (d,)),
                },
            },
            "mlp_norm": _layernorm(get, p + "ln_2", d),
        }

    params: Params = {
        "embeddings": {
            "token": {"embedding": get("wte.weight", (config.vocab_size, d))},
            "position": {"embedding": get("wpe.weight", (config.max_seq_len, d))},
        },
        "blocks": {i: block(i) for i in range(config.num_layers)},
        "final_norm": _layernorm(get, "ln_f", d),
    }
    if not config.tie_embeddings:
        # lm_head sits outside the "transformer." prefix in GPT2LMHeadModel files.
        head = _Tensors(get.tensors, get.path, "lm_head.weight")
        params["unembed"] = {"kernel": head("lm_head.weight", (config.vocab_size, d)).T}
    return params


_WEIGHTS = {
    "bert": ("embeddings.word_embeddings.weight", _bert_weights),
    "gpt2": ("wte.weight", _gpt2_weights),
}


def convert_weights(
    model_type: str, tensors: Mapping[str, np.ndarray], config: ModelConfig, path: pathlib.Path
) -> Params:
    """The attnjax parameter tree (nested dict, float32) of a checkpoint's ``tensors``."""
    if model_type not in _WEIGHTS:
        raise ValueError(f"model_type={model_type!r} is not supported: {SUPPORTED_MODEL_TYPES}")
    marker, convert = _WEIGHTS[model_type]
    return convert(_Tensors(tensors, path, marker), config)
