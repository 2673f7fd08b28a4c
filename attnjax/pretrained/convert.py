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

import dataclasses
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from attnjax.functional._checks import as_int
from attnjax.models.config import ModelConfig
from attnjax.models.encoder import BERT_SETTINGS
from attnjax.models.scan import stack_layers

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


def _linear(get: _Tensors, name: str, n_in: int, n_out: int, out_in: bool) -> Params:
    """``{"kernel": [in, out], "bias": [out]}`` of a dense layer stored [out, in] (PyTorch
    ``Linear``, ``out_in``) or [in, out] (GPT-2's ``Conv1D``)."""
    if out_in:
        kernel = get(f"{name}.weight", (n_out, n_in)).T
    else:
        kernel = get(f"{name}.weight", (n_in, n_out))
    return {"kernel": kernel, "bias": get(f"{name}.bias", (n_out,))}


def _bert_projections(get: _Tensors, block: str, d: int, width: int) -> dict[str, Params]:
    """Query, key, value and output projections of a block, each a dense layer of its own."""
    names = {
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
    }
    projections = {k: _linear(get, block + n, d, width, out_in=True) for k, n in names.items()}
    projections["output"] = _linear(get, block + "attention.output.dense", width, d, True)
    return projections


def _gpt2_projections(get: _Tensors, block: str, d: int, width: int) -> dict[str, Params]:
    """GPT-2 fuses query, key and value into ``c_attn``: its output columns are [q | k | v]."""
    qkv = _linear(get, block + "attn.c_attn", d, 3 * width, out_in=False)
    kernels = np.split(qkv["kernel"], 3, axis=1)
    biases = np.split(qkv["bias"], 3)
    projections = {
        name: {"kernel": kernel, "bias": bias}
        for name, kernel, bias in zip(("query", "key", "value"), kernels, biases, strict=True)
    }
    projections["output"] = _linear(get, block + "attn.c_proj", width, d, out_in=False)
    return projections


def _attention(projections: dict[str, Params], num_heads: int, head_dim: int) -> Params:
    """Per-head attention leaves from [D, N*H] projections: the columns ``n*H:(n+1)*H`` are
    head ``n``; the output projection's rows [N*H, D] are the heads' value-ups."""
    n, h = num_heads, head_dim
    query, key, value, output = (projections[k] for k in ("query", "key", "value", "output"))
    d = query["kernel"].shape[0]
    return {
        "query": query["kernel"].reshape(d, n, h),
        "key": key["kernel"].reshape(d, n, h),
        "value_down": value["kernel"].reshape(d, n, h),
        "value_up": output["kernel"].reshape(n, h, d),
        "query_bias": query["bias"].reshape(n, h),
        "key_bias": key["bias"].reshape(n, h),
        "value_bias": value["bias"].reshape(n, h),
        "output_bias": output["bias"],
    }


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where one checkpoint family keeps each piece of attnjax's parameter tree (tensor names
    under the key prefix; ``block`` is formatted with the layer index)."""

    marker: str  # a tensor whose name reveals the key prefix
    projections: Callable[[_Tensors, str, int, int], dict[str, Params]]
    out_in: bool  # MLP weights stored [out, in]
    block: str
    attention_norm: str
    mlp_up: str
    mlp_down: str
    mlp_norm: str
    token: str
    position: str
    token_type: str = ""
    embedding_norm: str = ""
    final_norm: str = ""
    unembed: str = ""  # outside the key prefix (GPT2LMHeadModel's lm_head), [V, D]


_LAYOUTS = {
    "bert": _Layout(
        marker="embeddings.word_embeddings.weight",
        projections=_bert_projections,
        out_in=True,
        block="encoder.layer.{}.",
        attention_norm="attention.output.LayerNorm",
        mlp_up="intermediate.dense",
        mlp_down="output.dense",
        mlp_norm="output.LayerNorm",
        token="embeddings.word_embeddings.weight",
        position="embeddings.position_embeddings.weight",
        token_type="embeddings.token_type_embeddings.weight",
        embedding_norm="embeddings.LayerNorm",
    ),
    "gpt2": _Layout(
        marker="wte.weight",
        projections=_gpt2_projections,
        out_in=False,
        block="h.{}.",
        attention_norm="ln_1",
        mlp_up="mlp.c_fc",
        mlp_down="mlp.c_proj",
        mlp_norm="ln_2",
        token="wte.weight",
        position="wpe.weight",
        final_norm="ln_f",
        unembed="lm_head.weight",
    ),
}


def _tree(get: _Tensors, config: ModelConfig, layout: _Layout) -> Params:
    """The one target tree: attnjax's parameters for ``config`` (the pieces its modules have),
    each read from where ``layout`` says."""
    d, f, vocab = config.model_dim, config.resolved_mlp_dim, config.vocab_size
    n, h = config.num_heads, config.resolved_head_dim

    def block(i: int) -> Params:
        p = layout.block.format(i)
        return {
            "attention": _attention(layout.projections(get, p, d, n * h), n, h),
            "attention_norm": _layernorm(get, p + layout.attention_norm, d),
            "mlp": {
                "up": _linear(get, p + layout.mlp_up, d, f, layout.out_in),
                "down": _linear(get, p + layout.mlp_down, f, d, layout.out_in),
            },
            "mlp_norm": _layernorm(get, p + layout.mlp_norm, d),
        }

    embeddings = {
        "token": {"embedding": get(layout.token, (vocab, d))},
        "position": {"embedding": get(layout.position, (config.max_seq_len, d))},
    }
    if config.type_vocab_size:
        shape = (config.type_vocab_size, d)
        embeddings["token_type"] = {"embedding": get(layout.token_type, shape)}
    if config.embedding_norm:
        embeddings["norm"] = _layernorm(get, layout.embedding_norm, d)
    params: Params = {
        "embeddings": embeddings,
        "blocks": {i: block(i) for i in range(config.num_layers)},
    }
    if config.final_norm:
        params["final_norm"] = _layernorm(get, layout.final_norm, d)
    if not config.tie_embeddings:
        head = _Tensors(get.tensors, get.path, layout.unembed)
        params["unembed"] = {"kernel": head(layout.unembed, (vocab, d)).T}
    return stack_layers(params) if config.resolved_scan_layers else params


def convert_weights(
    model_type: str, tensors: Mapping[str, np.ndarray], config: ModelConfig, path: pathlib.Path
) -> Params:
    """The attnjax parameter tree (nested dict, float32) of a checkpoint's ``tensors``."""
    if model_type not in _LAYOUTS:
        raise ValueError(f"model_type={model_type!r} is not supported: {SUPPORTED_MODEL_TYPES}")
    layout = _LAYOUTS[model_type]
    return _tree(_Tensors(tensors, path, layout.marker), config, layout)
