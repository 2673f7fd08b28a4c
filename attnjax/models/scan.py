"""Layers as a scan: L blocks with their parameters stacked on a leading L axis.

Unrolled, a model holds ``blocks`` as an ``nnx.List`` of L ``TransformerBlock``s (parameter
paths ``blocks/<i>/attention/query`` [D, N, H]) and the program holds L copies of the block.
Stacked (``ModelConfig.scan_layers``), ``blocks`` is one ``TransformerBlock`` whose every leaf
has a leading L axis (``blocks/attention/query`` [L, D, N, H]) and the forward pass is one
``jax.lax.scan`` over the split state: the program holds the block once, so compile time no
longer grows with depth.

The stacked model is built by creating the L blocks exactly as the unrolled one does and
stacking their states, so the same config and seed give the same weights either way.
``stack_layers`` / ``unstack_layers`` convert a parameter tree (nested dicts, as
``nnx.State.to_pure_dict()`` gives, checkpoints hold and ``attnjax.pretrained`` builds) between
the two layouts.

Rematerialisation (``ModelConfig.remat``) recomputes each block's forward pass in the backward
pass instead of keeping its activations: ``"full"`` keeps only the block inputs, ``"dots"``
keeps the results of matrix multiplications (``jax.checkpoint_policies.dots_saveable``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attnjax.models.config import REMAT_POLICIES

__all__ = [
    "REMAT_POLICIES",
    "is_stacked",
    "layer_block",
    "num_blocks",
    "remat_block",
    "scan_blocks",
    "stack_layers",
    "stack_modules",
    "unstack_layers",
]

_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_saveable}


def stack_modules(modules) -> nnx.Module:
    """One module of the same structure whose leaves stack those of ``modules`` on axis 0."""
    modules = list(modules)
    if not modules:
        raise ValueError("stack_modules needs at least one module")
    graphdef, _ = nnx.split(modules[0])
    states = [nnx.state(module) for module in modules]
    return nnx.merge(graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *states))


def is_stacked(blocks) -> bool:
    """Whether ``blocks`` (a model's ``blocks``) is one stacked block rather than a list."""
    return not isinstance(blocks, (nnx.List, list, tuple))


def num_blocks(blocks) -> int:
    """L, for either layout."""
    if not is_stacked(blocks):
        return len(blocks)
    return int(jax.tree.leaves(nnx.state(blocks, nnx.Param))[0].shape[0])


def layer_block(blocks, layer: int) -> nnx.Module:
    """Block ``layer`` (negative counts from the end). Stacked: a new module holding that
    layer's slice (a copy: changing it does not change the model)."""
    count = num_blocks(blocks)
    if not isinstance(layer, int) or not -count <= layer < count:
        raise ValueError(f"layer={layer!r} is out of range for a model of {count} layers")
    if not is_stacked(blocks):
        return blocks[layer]
    graphdef, state = nnx.split(blocks)
    return nnx.merge(graphdef, jax.tree.map(lambda x: x[layer], state))


def _checkpoint(fn: Callable, remat: str, *, prevent_cse: bool) -> Callable:
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat={remat!r} is unknown; choose one of {list(REMAT_POLICIES)}")
    if remat == "none":
        return fn
    return jax.checkpoint(fn, policy=_POLICIES[remat], prevent_cse=prevent_cse)


def _drawn(before, block):
    """The block's RNG state if running it drew random numbers (dropout), else None.

    Told at trace time: a stream that was not drawn from still holds the very arrays it was
    given. Writing back an untouched state would be a needless mutation (and one across trace
    levels when the model runs inside another transform, e.g. a decoding scan).
    """
    after = nnx.state(block, nnx.RngState)
    same = all(a is b for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
    return None if same else after


def remat_block(block: nnx.Module, remat: str, call: Callable) -> Any:
    """``call(block)`` with the block's forward pass rematerialised per ``remat``.

    ``call`` takes the block and returns arrays (a pytree); RNG counts the block draws are
    written back to ``block``.
    """
    if remat == "none":
        return call(block)
    graphdef, rng_state, rest = nnx.split(block, nnx.RngState, ...)

    def run(rng_state, rest):
        inner = nnx.merge(graphdef, rng_state, rest)
        out = call(inner)
        return out, _drawn(rng_state, inner)

    out, new_rng = _checkpoint(run, remat, prevent_cse=True)(rng_state, rest)
    if new_rng is not None:
        nnx.update(block, new_rng)
    return out


def scan_blocks(
    blocks: nnx.Module,
    call: Callable,
    x,
    per_layer: Any = None,
    *,
    remat: str = "none",
):
    """Run the L stacked ``blocks`` one after another with ``jax.lax.scan``.

    ``call(block, x, layer_input) -> (x, layer_output)`` runs one layer: ``block`` holds that
    layer's parameters, ``layer_input`` is that layer's slice of ``per_layer`` (a pytree with a
    leading L axis, e.g. a stacked key/value cache; or None). Returns ``(x, outputs)`` with the
    layer outputs stacked on a leading L axis. RNG counts drawn by the layers (dropout) are
    written back to ``blocks``.
    """
    graphdef, rng_state, rest = nnx.split(blocks, nnx.RngState, ...)

    def body(x, xs):
        layer_rng, layer_rest, layer_input = xs
        block = nnx.merge(graphdef, layer_rng, layer_rest)
        x, out = call(block, x, layer_input)
        return x, (out, _drawn(layer_rng, block))

    body = _checkpoint(body, remat, prevent_cse=False)  # scan already keeps CSE out
    x, (outputs, new_rng) = jax.lax.scan(body, x, (rng_state, rest, per_layer))
    if new_rng is not None:
        nnx.update(blocks, new_rng)
    return x, outputs


# ---- parameter trees: stacked <-> unrolled ------------------------------------------------------


def _layer_key(key) -> int | None:
    """The layer index of a ``blocks`` key (``3`` or ``"3"``), else None."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if isinstance(key, str) and key.isdigit():
        return int(key)
    return None


def stack_layers(tree: Mapping[str, Any]) -> dict[str, Any]:
    """An unrolled parameter tree (``tree["blocks"]`` = ``{0: {...}, 1: {...}, ...}``, keys
    ints or digit strings) → the stacked layout (``tree["blocks"]`` = one block whose leaves
    are [L, ...]). Other entries are kept as they are. NumPy leaves stay NumPy."""
    blocks = _blocks_of(tree)
    keys = sorted(blocks, key=_layer_key)
    indices = [_layer_key(k) for k in keys]
    if None in indices or indices != list(range(len(keys))):
        raise ValueError(
            f"tree['blocks'] must be keyed by layer 0..L-1 (unrolled layout), got keys {keys}"
        )
    layers = [blocks[k] for k in keys]
    structures = {jax.tree.structure(layer) for layer in layers}
    if len(structures) != 1:
        raise ValueError("tree['blocks'] layers have different parameter structures")
    stacked = jax.tree.map(lambda *xs: _stack(xs), *layers)
    return {**tree, "blocks": stacked}


def unstack_layers(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A stacked parameter tree (leaves of ``tree["blocks"]`` are [L, ...]) → the unrolled
    layout, ``tree["blocks"]`` = ``{0: {...}, ..., L-1: {...}}`` (int keys)."""
    blocks = _blocks_of(tree)
    if any(_layer_key(k) is not None for k in blocks):
        raise ValueError("tree['blocks'] is keyed by layer already (unrolled layout)")
    leaves = jax.tree.leaves(blocks)
    sizes = {leaf.shape[0] if getattr(leaf, "ndim", 0) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"the leaves of tree['blocks'] must share a leading L axis, got sizes {sizes}"
        )
    (count,) = sizes
    return {
        **tree,
        "blocks": {i: jax.tree.map(lambda x, i=i: x[i], blocks) for i in range(count)},
    }


def _blocks_of(tree) -> Mapping:
    if not isinstance(tree, Mapping) or not isinstance(tree.get("blocks"), Mapping):
        raise ValueError("tree must be a mapping with a 'blocks' mapping (a parameter tree)")
    return tree["blocks"]


def _stack(xs):
    if all(isinstance(x, jax.Array) for x in xs):
        return jnp.stack(xs)
    return np.stack([np.asarray(x) for x in xs])
