"""Transformer blocks and the decoder-only language model (GPT-2/GPT-3 layout)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Bool, Float, Int, Shaped

from attnjax import functional as F
from attnjax.functional._checks import as_int
from attnjax.functional._types import ArrayT
from attnjax.layers import MLP, NAMES, Interventions, KVCache, MultiHeadAttention, Recorder
from attnjax.layers._checks import trusted_inputs
from attnjax.models.config import ModelConfig
from attnjax.models.embeddings import Embeddings, norm_for
from attnjax.models.scan import (
    is_stacked,
    layer_block,
    num_blocks,
    remat_block,
    scan_blocks,
    stack_modules,
)

# The activations only a block with an MLP has (``attnjax.layers.probe.NAMES``).
MLP_NAMES = ("mlp_hidden", "mlp_out")

__all__ = [
    "MLP_NAMES",
    "DecoderLM",
    "Embeddings",
    "TransformerBlock",
    "make_blocks",
    "run_blocks",
    "stack_patterns",
]


class TransformerBlock(nnx.Module):
    """Attention then MLP, each with a residual connection.

    Pre-LN (GPT-2/3): ``x + attn(norm(x))``, then ``x + mlp(norm(x))``.
    Post-LN (BERT):   ``norm(x + attn(x))``, then ``norm(x + mlp(x))``.
    With ``config.attention_only`` the block is the attention step alone: ``mlp`` and
    ``mlp_norm`` are None (no parameters), and ``resid_post`` equals ``resid_mid``.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(config.init_std)
        self.norm_position = config.norm_position
        self.attention_norm = norm_for(config, rngs)
        self.attention = MultiHeadAttention(
            config.model_dim,
            config.num_heads,
            num_kv_heads=config.resolved_num_kv_heads,
            head_dim=config.resolved_head_dim,
            value_dim=config.resolved_value_dim,
            use_bias=config.attention_bias,
            dropout_rate=config.attention_dropout_rate,
            is_causal=config.is_causal,
            rope=config.position_embedding == "rope",
            rope_base=config.rope_base,
            implementation=config.attention_implementation,
            dtype=config.compute_dtype,
            param_dtype=config.parameter_dtype,
            kernel_init=init,
            rngs=rngs,
        )
        self.mlp_norm = None if config.attention_only else norm_for(config, rngs)
        self.mlp = (
            None
            if config.attention_only
            else MLP(
                config.model_dim,
                config.resolved_mlp_dim,
                activation=config.activation,
                use_bias=config.mlp_bias,
                dtype=config.compute_dtype,
                param_dtype=config.parameter_dtype,
                kernel_init=init,
                rngs=rngs,
            )
        )
        self.dropout = nnx.Dropout(config.dropout_rate, rngs=rngs)

    def __call__(
        self,
        x: Float[ArrayT, "B T D"],
        *,
        mask: Bool[ArrayT, ...] | None = None,
        bias: Float[ArrayT, ...] | None = None,
        positions: Int[ArrayT, "#B T"] | None = None,
        cache: KVCache | None = None,
        return_pattern: bool = False,
        edits: Interventions | None = None,
        record: Recorder | None = None,
    ):
        """``x`` [B, T, D] → [B, T, D]; extra outputs as ``MultiHeadAttention.__call__``.

        ``edits``: this layer's slice of ``Interventions``; ``record``: a ``Recorder`` that
        receives the activations it names (``attnjax.layers.probe.NAMES``)."""
        pre = self.norm_position == "pre"
        x = x if edits is None else edits.edit_residual(x)
        put = (lambda name, value: None) if record is None else record.put
        put("resid_pre", x)
        outputs = self.attention(
            self.attention_norm(x) if pre else x,
            mask=mask,
            bias=bias,
            positions=positions,
            cache=cache,
            return_pattern=return_pattern,
            edits=edits,
            record=record,
        )
        attended, extras = (
            (outputs, ())
            if not isinstance(outputs, tuple)
            else (
                outputs[0],
                outputs[1:],
            )
        )
        put("attn_out", attended)
        x = x + self.dropout(attended) if pre else self.attention_norm(x + self.dropout(attended))
        put("resid_mid", x)
        if self.mlp is not None:
            mlp_out = self.mlp(self.mlp_norm(x) if pre else x, record)
            put("mlp_out", mlp_out)
            x = x + self.dropout(mlp_out) if pre else self.mlp_norm(x + self.dropout(mlp_out))
        put("resid_post", x)
        return (x, *extras) if extras else x


def check_attention_only_capture(capture) -> None:
    """Refuse capturing an MLP activation of an attention-only model (its blocks have none)."""
    capture = (capture,) if isinstance(capture, str) else tuple(capture)
    missing = [name for name in capture if name in MLP_NAMES]
    if missing:
        raise ValueError(
            f"capture: {', '.join(map(repr, missing))} cannot be captured: the model is "
            f"attention_only=True, its blocks have no MLP (capture one of "
            f"{[n for n in NAMES if n not in MLP_NAMES]})"
        )


def stack_patterns(patterns) -> Float[ArrayT, "L B N T S"]:
    """Per-layer patterns [B, N, T, S] → one array [L, B, N, T, S]."""
    return jnp.stack(patterns)


def make_blocks(config: ModelConfig, rngs: nnx.Rngs):
    """The L blocks of ``config``: an ``nnx.List``, or with ``config.resolved_scan_layers`` one
    ``TransformerBlock`` whose leaves are stacked [L, ...] (the same weights for the same
    ``rngs``: the blocks are created in the same order either way, then stacked)."""
    blocks = [TransformerBlock(config, rngs=rngs) for _ in range(config.num_layers)]
    return stack_modules(blocks) if config.resolved_scan_layers else nnx.List(blocks)


def run_blocks(
    blocks,
    final_norm,
    x: Float[ArrayT, "B T D"],
    *,
    mask=None,
    bias=None,
    positions=None,
    return_patterns: bool = False,
    return_hidden_states: bool = False,
    capture=(),
    interventions: Interventions | None = None,
    remat: str = "none",
):
    """``x`` through every block, then ``final_norm`` (if any).

    ``blocks`` is a list of blocks (unrolled) or one stacked block (run with ``jax.lax.scan``);
    ``remat`` rematerialises each block in the backward pass (``attnjax.models.scan``).
    Returns ``(x, extras)``: ``extras`` holds the patterns [L, B, N, T, S] if asked, then the
    hidden states [L+1, B, T, D] (after the embeddings and after each block; the last one after
    the final norm) if asked, then, if ``capture`` names activations, a dict of them stacked
    over layers ([L, ...], see ``attnjax.layers.probe.NAMES``) plus ``"resid_final"`` [B, T, D]
    (after the final norm). ``interventions`` (leading L axes) edit the pass.
    """
    x0 = x
    first = blocks if is_stacked(blocks) else blocks[0]
    if first.mlp is None:
        check_attention_only_capture(capture)
    if interventions is not None:
        interventions.check(num_blocks(blocks), first.attention.num_heads)

    def layer(block, x, edits):
        record = Recorder(capture) if capture else None
        out = block(
            x,
            mask=mask,
            bias=bias,
            positions=positions,
            return_pattern=return_patterns,
            edits=edits,
            record=record,
        )
        x, pattern = out if return_patterns else (out, None)
        recorded = None if record is None else record.values
        return x, (pattern, x if return_hidden_states else None, recorded)

    if is_stacked(blocks):  # interventions: per-layer slices as the scan's xs
        x, (patterns, hidden, captured) = scan_blocks(blocks, layer, x, interventions, remat=remat)
    else:
        outputs = []
        for i, block in enumerate(blocks):
            edits = None if interventions is None else interventions.layer(i)
            x, out = remat_block(block, remat, lambda b, x=x, e=edits: layer(b, x, e))
            outputs.append(out)
        patterns = stack_patterns([o[0] for o in outputs]) if return_patterns else None
        hidden = jnp.stack([o[1] for o in outputs]) if return_hidden_states else None
        captured = jax.tree.map(lambda *ls: jnp.stack(ls), *[o[2] for o in outputs])
    if final_norm is not None:
        x = final_norm(x)
    extras = ()
    if return_patterns:
        extras += (patterns,)
    if return_hidden_states:
        extras += (jnp.concatenate([x0[None], hidden[:-1], x[None]]),)
    if capture:
        extras += ({**captured, "resid_final": x},)
    return x, extras


class DecoderLM(nnx.Module):
    """Decoder-only language model: embeddings, L pre-LN blocks, final norm, unembedding.

    ``model(tokens)`` → logits [B, T, V] (float32). With ``tie_embeddings`` the unembedding
    is the transpose of the token embedding. Build with ``DecoderLM(config, rngs=...)``.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        if config.architecture != "decoder":
            raise ValueError(f"DecoderLM needs architecture='decoder', got {config.architecture!r}")
        self.config = config
        self.embeddings = Embeddings(config, rngs=rngs)
        self.blocks = make_blocks(config, rngs)
        self.final_norm = norm_for(config, rngs) if config.final_norm else None
        self.unembed = (
            None
            if config.tie_embeddings
            else nnx.Linear(
                config.model_dim,
                config.vocab_size,
                use_bias=False,
                dtype=config.compute_dtype,
                param_dtype=config.parameter_dtype,
                kernel_init=nnx.initializers.normal(config.init_std),
                rngs=rngs,
            )
        )

    def __call__(
        self,
        tokens: Shaped[ArrayT, "B T"],
        *,
        positions: Int[ArrayT, "#B T"] | None = None,
        mask: Bool[ArrayT, ...] | None = None,
        return_patterns: bool = False,
        return_hidden_states: bool = False,
        capture=(),
        interventions: Interventions | None = None,
    ):
        """Logits [B, T, V] for ``tokens`` [B, T] (causal).

        ``mask`` (broadcastable to [B, N, T, T]) adds to causal masking, e.g. padding or
        segment masks. Extras, as with ``Encoder``: ``return_patterns`` adds the patterns
        [L, B, N, T, T] (float32); ``return_hidden_states`` adds the residual stream after the
        embeddings and after every block, [L+1, B, T, D] (the last one after the final norm).
        ``capture`` (activation names, ``attnjax.layers.probe.NAMES``) adds a dict of them,
        each [L, ...], plus ``"resid_final"``; ``interventions`` edit the pass (arrays with a
        leading L axis, see ``attnjax.layers.Interventions``).
        Returns ``logits``, or the tuple ``(logits, patterns?, hidden_states?, captured?)`` with
        only the requested extras, in that order.
        """
        self._check_tokens(tokens)
        length = tokens.shape[1]
        x = self.embeddings(tokens, positions)
        bias = self._alibi(length, length, 0)
        x, extras = run_blocks(
            self.blocks,
            self.final_norm,
            x,
            mask=mask,
            bias=bias,
            positions=positions,
            return_patterns=return_patterns,
            return_hidden_states=return_hidden_states,
            capture=capture,
            interventions=interventions,
            remat=self.config.remat,
        )
        logits = self._unembed(x)
        return (logits, *extras) if extras else logits

    def block(self, layer: int) -> TransformerBlock:
        """Block ``layer`` (with ``scan_layers``, a copy holding that layer's slice)."""
        return layer_block(self.blocks, layer)

    def init_cache(self, batch_size: int, max_length: int | None = None):
        """Empty key/value caches for up to ``max_length`` tokens: a tuple of L ``KVCache``s,
        or with ``scan_layers`` one ``KVCache`` stacked on a leading L axis (key
        [L, B, S, K, H], value [L, B, S, K, R], length [L])."""
        max_length = self.config.max_seq_len if max_length is None else max_length
        if max_length > self.config.max_seq_len:
            raise ValueError(
                f"max_length={max_length} exceeds the model's max_seq_len={self.config.max_seq_len}"
            )
        dtype = self.config.compute_dtype
        if is_stacked(self.blocks):
            # the stacked attention's sizes are plain attributes: no parameter is read
            one = self.blocks.attention.init_cache(batch_size, max_length, dtype)
            layers = num_blocks(self.blocks)
            return jax.tree.map(lambda a: jnp.zeros((layers, *a.shape), a.dtype), one)
        return tuple(
            block.attention.init_cache(batch_size, max_length, dtype) for block in self.blocks
        )

    def decode(self, tokens: Shaped[ArrayT, "B T"], cache):
        """Append ``tokens`` (a prompt, or one token per sequence) to ``cache``.

        ``cache`` is what ``init_cache`` gives (or a previous ``decode`` returned). Returns the
        logits [B, T, V] of the new positions and the updated cache. Feeding a sequence in
        any split of chunks gives the same logits as ``model(sequence)``. Tokens past the
        cache's ``max_length`` raise ``ValueError("cache overflow: ...")``; under ``jit``, a
        ``JaxRuntimeError`` with that message when the program runs.
        """
        self._check_tokens(tokens)
        stacked = is_stacked(self.blocks)
        first = self._check_cache(cache, stacked)
        offset = first.length
        length = tokens.shape[1]
        first.check_room(length)  # before the embeddings see positions past the cache
        positions = (jnp.arange(length) + offset)[None]
        x = self.embeddings(tokens, positions)
        bias = self._alibi(length, first.max_length, offset)

        def layer(block, x, layer_cache):
            return block(x, bias=bias, positions=positions, cache=layer_cache)

        with trusted_inputs():  # every layer's cache holds as many tokens as the first: checked
            if stacked:
                x, new_cache = scan_blocks(self.blocks, layer, x, cache)
            else:
                new_cache = []
                for block, layer_cache in zip(self.blocks, cache, strict=True):
                    x, layer_cache = layer(block, x, layer_cache)
                    new_cache.append(layer_cache)
                new_cache = tuple(new_cache)
        return self._logits(x), new_cache

    def _check_cache(self, cache, stacked: bool) -> KVCache:
        """The first layer's cache, after checking ``cache`` has the model's layout and L."""
        layers = num_blocks(self.blocks)
        if stacked:
            if not isinstance(cache, KVCache) or cache.key.ndim != 5:
                raise ValueError(
                    "cache must be one KVCache stacked on a leading L axis (scan_layers=True); "
                    "use model.init_cache"
                )
            if cache.key.shape[0] != layers:
                raise ValueError(f"cache has {cache.key.shape[0]} layers, the model has {layers}")
            return jax.tree.map(lambda a: a[0], cache)
        if isinstance(cache, KVCache) or not isinstance(cache, (tuple, list)):
            raise ValueError(
                "cache must be a tuple of one KVCache per layer (scan_layers=False); "
                "use model.init_cache"
            )
        if len(cache) != layers:
            raise ValueError(f"cache has {len(cache)} layers, the model has {layers}")
        return cache[0]

    def _alibi(self, query_length, key_length, offset):
        if self.config.position_embedding != "alibi":
            return None
        return F.alibi_bias(self.config.num_heads, query_length, key_length, offset=offset)

    def logits_from_residual(self, x: Float[ArrayT, "*B D"]) -> Float[ArrayT, "*B V"]:
        """The final norm and unembedding applied to any residual ``x`` (the logit lens)."""
        return self._logits(x)

    def _logits(self, x: Float[ArrayT, "*B D"]) -> Float[ArrayT, "*B V"]:
        """Final norm, then unembedding."""
        return self._unembed(x if self.final_norm is None else self.final_norm(x))

    def _unembed(self, x: Float[ArrayT, "*B D"]) -> Float[ArrayT, "*B V"]:
        logits = self.embeddings.token.attend(x) if self.unembed is None else self.unembed(x)
        return logits.astype(jnp.float32)

    def _check_tokens(self, tokens) -> None:
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape [B, T], got {tokens.shape}")
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
        if tokens.shape[1] > self.config.max_seq_len:
            raise ValueError(
                f"sequence length {tokens.shape[1]} exceeds max_seq_len={self.config.max_seq_len}"
            )


def greedy_generate(
    model: DecoderLM, prompt: Int[ArrayT, "B T"], max_new_tokens: int
) -> tuple[Int[ArrayT, "B total"], Float[ArrayT, "B n V"]]:
    """Greedy decoding with the key/value cache, compiled once.

    Returns the prompt followed by ``max_new_tokens`` generated ids, and the logits that chose
    each generated id. Runs without dropout (eval mode on a copy); ``model`` keeps its mode.
    """
    prompt = jnp.asarray(prompt)
    model._check_tokens(prompt)
    max_new_tokens = as_int("max_new_tokens", max_new_tokens, minimum=1)
    total = prompt.shape[1] + max_new_tokens
    if total > model.config.max_seq_len:
        raise ValueError(
            f"prompt length {prompt.shape[1]} + max_new_tokens={max_new_tokens} exceeds "
            f"max_seq_len={model.config.max_seq_len}"
        )
    model.embeddings.check_ids(prompt)
    graphdef, state = nnx.split(model)
    return _greedy(graphdef, state, prompt, max_new_tokens)


@jax.jit(static_argnums=(0, 3))
def _greedy(graphdef, state, prompt, max_new_tokens):
    with trusted_inputs():  # prompt checked by the caller, cache sized to fit, tokens an argmax
        return _greedy_unchecked(graphdef, state, prompt, max_new_tokens)


def _greedy_unchecked(graphdef, state, prompt, max_new_tokens):
    model = nnx.merge(graphdef, state)
    model.eval()  # a copy: no dropout while generating; the caller's model keeps its mode
    cache = model.init_cache(prompt.shape[0], prompt.shape[1] + max_new_tokens)
    logits, cache = model.decode(prompt, cache)
    last = logits[:, -1]

    def step(carry, _):
        last_logits, cache = carry
        token = jnp.argmax(last_logits, axis=-1).astype(prompt.dtype)
        logits, cache = model.decode(token[:, None], cache)
        return (logits[:, 0], cache), (token, last_logits)

    _, (tokens, chosen_logits) = jax.lax.scan(step, (last, cache), length=max_new_tokens)
    generated = jnp.swapaxes(tokens, 0, 1)
    return jnp.concatenate([prompt, generated], axis=1), jnp.swapaxes(chosen_logits, 0, 1)
