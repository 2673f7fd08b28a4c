"""Look inside a forward pass and intervene on it, with interventions as arrays.

- ``run_with_cache``: the model's output and any activations of ``attnjax.layers.NAMES``.
- ``ablation_scan``: the effect on ``metric`` of ablating each head alone (``[L, N]``), or each
  pair (``[L, N, L, N]``), as one compiled program: the per-head scales are a batch of arrays
  mapped with ``jax.lax.map`` in vmapped chunks (``chunk_size``).
- ``patching_scan``: clean-run activations patched into a corrupted run, per head (``[L, N]``)
  and per residual position (``[L, T]``) (activation patching, Meng et al. 2022; Wang et al.
  2022).
- ``attribution``: the first-order estimate of the same grids, one forward and one backward
  pass: the gradient of ``metric`` with respect to the patch weights at 0 (attribution
  patching, Nanda 2023; Syed et al. 2023).
- ``logit_lens`` (nostalgebraist 2020) and ``direct_logit_attribution`` per head.

``metric(output) -> scalar``: ``output`` is what the model returns (logits [B, T, V] for a
decoder, hidden states [B, T, D] for an encoder). Inputs are token ids [B, T]; more call
arguments (``attention_mask=``, ``token_types=``) go in ``call_kwargs``. Run models in eval
mode (``model.eval()``) so dropout does not blur the comparison.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Float, Int

from attnjax.functional._checks import as_int, check_choice
from attnjax.functional._types import ArrayT
from attnjax.layers import NAMES, Interventions
from attnjax.layers.probe import check_names
from attnjax.models.transformer import MLP_NAMES

__all__ = [
    "PatchingResult",
    "ablation_attribution",
    "ablation_scan",
    "attribution",
    "direct_logit_attribution",
    "logit_lens",
    "mean_moved",
    "patching_scan",
    "run_with_cache",
]


def run_with_cache(
    model, inputs: Int[ArrayT, "B T"], names=None, *, interventions=None, **call_kwargs
) -> tuple[Any, dict[str, Any]]:
    """``(output, cache)``: the model's output and a dict of activations, each ``[L, ...]``
    (shapes in ``attnjax.layers.NAMES``), plus ``"resid_final"`` [B, T, D] (after the final
    norm). ``names`` default to all the model has (an ``attention_only`` model has no
    ``mlp_hidden``/``mlp_out``; naming one raises ``ValueError``); unknown names raise
    ``ValueError`` ("did you mean ...").
    Patterns and scores are recomputed from the attention call's log-sum-exp only when named,
    so a blocked (flash) model stays on its fast path otherwise. Works under ``jax.jit``."""
    if names is None:
        absent = MLP_NAMES if model.config.attention_only else ()
        names = tuple(n for n in NAMES if n not in absent)
    else:
        names = check_names(names)
    if not names:
        raise ValueError("names must name at least one activation")
    output, *extras = model(inputs, capture=names, interventions=interventions, **call_kwargs)
    return output, extras[-1]


def _sizes(model) -> tuple[int, int]:
    return model.config.num_layers, model.config.num_heads


def mean_moved(
    model, reference: Int[ArrayT, "Bref T"], **call_kwargs
) -> Float[ArrayT, "L 1 T N R"]:
    """Each head's moved values averaged over the batch of ``reference`` inputs: the source
    of mean-ablation (``Interventions(head_weight=..., head_source=mean_moved(...))``)."""
    _, cache = _compiled_cache(model, reference, ("moved",), call_kwargs)
    return cache["moved"].mean(axis=1, keepdims=True)


# ---- one compiled program for many interventions --------------------------------------------


def _zero_ablate(mask, shared):
    return Interventions(head_scale=1.0 - mask)


def _mean_ablate(mask, shared):
    return Interventions(head_weight=mask[:, None, :], head_source=shared)


def _patch_heads(mask, shared):
    return Interventions(head_weight=mask[:, None, :], head_source=shared)


def _patch_residual(mask, shared):
    return Interventions(resid_weight=mask, resid_source=shared)


@functools.partial(jax.jit, static_argnames=("graphdef", "metric", "build", "chunk_size"))
def _mapped(graphdef, state, inputs, call_kwargs, items, shared, *, metric, build, chunk_size):
    def one(item):
        model = nnx.merge(graphdef, state)
        return metric(model(inputs, interventions=build(item, shared), **call_kwargs))

    return jax.lax.map(one, items, batch_size=chunk_size)


def _metric_of_many(model, inputs, metric, items, shared, build, chunk_size, call_kwargs):
    """``(values, unedited)``: ``metric`` under each item's interventions, and without any (an
    all-zero item, run in the same compiled program)."""
    graphdef, state = nnx.split(model)
    items = jnp.concatenate([jnp.zeros_like(items[:1]), items])
    chunk_size = min(as_int("chunk_size", chunk_size, minimum=1), items.shape[0])
    values = _mapped(
        graphdef,
        state,
        inputs,
        call_kwargs,
        items,
        shared,
        metric=metric,
        build=build,
        chunk_size=chunk_size,
    )
    return values[1:], values[0]


@functools.partial(jax.jit, static_argnames=("graphdef", "names"))
def _captured(graphdef, state, inputs, call_kwargs, *, names):
    return run_with_cache(nnx.merge(graphdef, state), inputs, names, **call_kwargs)


def _compiled_cache(model, inputs, names, call_kwargs):
    graphdef, state = nnx.split(model)
    return _captured(graphdef, state, inputs, call_kwargs, names=tuple(names))


@functools.partial(jax.jit, static_argnames=("graphdef", "metric"))
def _metric_jit(graphdef, state, inputs, call_kwargs, *, metric):
    return metric(nnx.merge(graphdef, state)(inputs, **call_kwargs))


def _compiled_metric(model, inputs, metric, call_kwargs):
    graphdef, state = nnx.split(model)
    return _metric_jit(graphdef, state, inputs, call_kwargs, metric=metric)


def _one_hots(*shape: int) -> jax.Array:
    """``[prod(shape), *shape]``: one 1 per row."""
    count = int(jnp.prod(jnp.asarray(shape)))
    return jnp.eye(count, dtype=jnp.float32).reshape(count, *shape)


def ablation_scan(
    model,
    inputs: Int[ArrayT, "B T"],
    metric,
    *,
    method: str = "zero",
    reference: Int[ArrayT, "Bref T"] | None = None,
    pairs: bool = False,
    chunk_size: int = 16,
    **call_kwargs,
) -> Float[ArrayT, ...]:
    """``metric(ablated) - metric(clean)`` for each head ablated alone: ``[L, N]``.

    ``method="zero"`` sets the head's output to 0 (``head_scale`` 0); ``"mean"`` replaces its
    moved values by their mean over ``reference`` (default ``inputs``), per position.
    ``pairs=True`` ablates every pair of heads instead: ``[L, N, L, N]`` (the diagonal is the
    single-head scan). All ablations run as one jitted program: a ``jax.lax.map`` over the
    one-hot ablation masks, ``chunk_size`` of them vmapped at a time.
    """
    check_choice("method", method, ("zero", "mean"))
    num_layers, num_heads = _sizes(model)
    masks = _one_hots(num_layers, num_heads)
    if pairs:
        masks = jnp.minimum(masks[:, None] + masks[None, :], 1.0).reshape(-1, *masks.shape[1:])
    if method == "mean":
        shared = mean_moved(model, inputs if reference is None else reference, **call_kwargs)
        build = _mean_ablate
    else:
        shared, build = None, _zero_ablate
    values, clean = _metric_of_many(
        model, inputs, metric, masks, shared, build, chunk_size, call_kwargs
    )
    shape = (num_layers, num_heads) * (2 if pairs else 1)
    return (values - clean).reshape(shape)


class PatchingResult(NamedTuple):
    """Effects of patching clean activations into the corrupted run, ``metric(patched) -
    metric(corrupted)``: per head ``heads`` [L, N] (all positions of one head's output) and per
    residual position ``positions`` [L, T] (the residual entering block l at position t).
    ``clean`` and ``corrupted`` are the two unpatched metric values (scalars)."""

    heads: Any
    positions: Any
    clean: Any
    corrupted: Any


def _clean_sources(model, clean, call_kwargs):
    _, cache = _compiled_cache(model, clean, ("moved", "resid_pre"), call_kwargs)
    return cache["moved"], cache["resid_pre"]


def _check_pair(clean, corrupted) -> None:
    if jnp.shape(clean) != jnp.shape(corrupted):
        raise ValueError(
            f"clean {jnp.shape(clean)} and corrupted {jnp.shape(corrupted)} must have one shape"
        )


def patching_scan(
    model,
    clean: Int[ArrayT, "B T"],
    corrupted: Int[ArrayT, "B T"],
    metric,
    *,
    chunk_size: int = 16,
    **call_kwargs,
) -> PatchingResult:
    """Activation patching of every head and every (layer, position) of the residual stream,
    each as one compiled, vmapped program (see :class:`PatchingResult`)."""
    _check_pair(clean, corrupted)
    num_layers, num_heads = _sizes(model)
    moved, resid = _clean_sources(model, clean, call_kwargs)
    run = functools.partial(
        _metric_of_many, model, corrupted, metric, chunk_size=chunk_size, call_kwargs=call_kwargs
    )
    heads, corrupted_value = run(_one_hots(num_layers, num_heads), moved, _patch_heads)
    positions, _ = run(_one_hots(num_layers, clean.shape[1]), resid, _patch_residual)
    clean_value = _compiled_metric(model, clean, metric, call_kwargs)
    return PatchingResult(
        heads=(heads - corrupted_value).reshape(num_layers, num_heads),
        positions=(positions - corrupted_value).reshape(num_layers, clean.shape[1]),
        clean=clean_value,
        corrupted=corrupted_value,
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "metric"))
def _patch_gradients(graphdef, state, corrupted, call_kwargs, moved, resid, *, metric):
    def patched(weights):
        head_weight, resid_weight = weights
        edits = Interventions(
            head_weight=head_weight,
            head_source=moved,
            resid_weight=resid_weight,
            resid_source=resid,
        )
        model = nnx.merge(graphdef, state)
        return metric(model(corrupted, interventions=edits, **call_kwargs))

    num_layers, _, _, num_heads, _ = moved.shape
    zeros = (
        jnp.zeros((num_layers, 1, num_heads), jnp.float32),
        jnp.zeros(resid.shape[:1] + resid.shape[2:3], jnp.float32),
    )
    value, (head_grad, resid_grad) = jax.value_and_grad(patched)(zeros)
    return value, head_grad[:, 0], resid_grad


def attribution(
    model,
    clean: Int[ArrayT, "B T"],
    corrupted: Int[ArrayT, "B T"],
    metric,
    **call_kwargs,
) -> PatchingResult:
    """The linear (gradient) estimate of :func:`patching_scan`, from one forward and one
    backward pass of the corrupted run: each patch weight's derivative at 0, i.e.
    ``(clean - corrupted activation) · ∂metric/∂activation`` (attribution patching)."""
    _check_pair(clean, corrupted)
    moved, resid = _clean_sources(model, clean, call_kwargs)
    graphdef, state = nnx.split(model)
    corrupted_value, heads, positions = _patch_gradients(
        graphdef, state, corrupted, call_kwargs, moved, resid, metric=metric
    )
    clean_value = _compiled_metric(model, clean, metric, call_kwargs)
    return PatchingResult(heads, positions, clean_value, corrupted_value)


@functools.partial(jax.jit, static_argnames=("graphdef", "metric"))
def _scale_gradient(graphdef, state, inputs, call_kwargs, ones, *, metric):
    def scaled(head_scale):
        model = nnx.merge(graphdef, state)
        edits = Interventions(head_scale=head_scale)
        return metric(model(inputs, interventions=edits, **call_kwargs))

    return jax.grad(scaled)(ones)


def ablation_attribution(
    model, inputs: Int[ArrayT, "B T"], metric, **call_kwargs
) -> Float[ArrayT, "L N"]:
    """The linear estimate of the zero-ablation ``ablation_scan``: ``-∂metric/∂head_scale``
    at 1 (one backward pass)."""
    graphdef, state = nnx.split(model)
    ones = jnp.ones(_sizes(model), jnp.float32)
    return -_scale_gradient(graphdef, state, inputs, call_kwargs, ones, metric=metric)


# ---- reading the residual stream --------------------------------------------------------------


def _check_decoder(model, what: str) -> None:
    if not hasattr(model, "logits_from_residual"):
        raise ValueError(f"{what} needs a decoder (DecoderLM) model, got {type(model).__name__}")


def logit_lens(model, inputs: Int[ArrayT, "B T"], **call_kwargs) -> Float[ArrayT, "L1 B T V"]:
    """Each layer's residual read out through the final norm and unembedding:
    ``[L+1, B, T, V]``, after the embeddings and after each block (the last equals the
    logits)."""
    _check_decoder(model, "logit_lens")
    _, cache = run_with_cache(model, inputs, ("resid_pre", "resid_post"), **call_kwargs)
    residuals = jnp.concatenate([cache["resid_pre"][:1], cache["resid_post"]])
    return model.logits_from_residual(residuals)


def _frozen_norm(norm, final):
    """The final norm as a linear map, its scale frozen at the value it has on ``final``
    [B, T, D]: ``(c - mean c) / σ · g`` (LayerNorm) or ``c / rms · g`` (RMSNorm); plus its
    constant (the LayerNorm bias, or 0)."""
    if norm is None:
        return (lambda c: c), 0.0
    final = final.astype(jnp.float32)
    scale = 1.0 if norm.scale is None else norm.scale[...].astype(jnp.float32)
    if isinstance(norm, nnx.LayerNorm):
        sigma = jnp.sqrt(final.var(axis=-1, keepdims=True) + norm.epsilon)
        bias = 0.0 if norm.bias is None else norm.bias[...].astype(jnp.float32)
        return (lambda c: (c - c.mean(axis=-1, keepdims=True)) / sigma * scale), bias
    rms = jnp.sqrt(jnp.mean(final**2, axis=-1, keepdims=True) + norm.epsilon)
    return (lambda c: c / rms * scale), 0.0


def _unembedding(model) -> Float[ArrayT, "D V"]:
    if getattr(model, "unembed", None) is None:  # tied (or an encoder: its embeddings)
        return model.embeddings.token.embedding[...].T
    return model.unembed.kernel[...]


def direct_logit_attribution(
    model, inputs: Int[ArrayT, "B T"], targets: Int[ArrayT, "B T"], **call_kwargs
) -> Float[ArrayT, "L B T N"]:
    """Each head's direct contribution to the logit of ``targets`` [B, T]: its output through
    the final norm (its scale frozen at the actual final residual, as in Elhage et al. 2021's
    and TransformerLens' direct logit attribution) and the unembedding column of the target.

    The contributions of all parts (embeddings, every head, attention output biases, MLPs)
    plus the norm's bias term add up to the target logits exactly. Pre-LN decoders only.
    """
    _check_decoder(model, "direct_logit_attribution")
    if model.config.norm_position != "pre":
        raise ValueError("direct_logit_attribution needs a pre-LN model (norm_position='pre')")
    if jnp.shape(targets) != jnp.shape(inputs):
        raise ValueError(f"targets must have the shape of inputs {jnp.shape(inputs)}")
    _, cache = run_with_cache(model, inputs, ("head_out", "resid_post"), **call_kwargs)
    linear, _ = _frozen_norm(model.final_norm, cache["resid_post"][-1])
    columns = jnp.take(_unembedding(model).astype(jnp.float32), targets, axis=1)  # [D, B, T]
    heads = linear(jnp.moveaxis(cache["head_out"].astype(jnp.float32), 3, 1))  # [L,N,B,T,D]
    return jnp.einsum("LNBTD,DBT->LBTN", heads, columns)
