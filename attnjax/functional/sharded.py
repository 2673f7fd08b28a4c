"""Attention per shard: kernels XLA cannot partition run under ``jax.shard_map``.

XLA partitions einsums over batch and head axes by itself, but not a Mosaic (Pallas) kernel
("Mosaic kernels cannot be automatically partitioned") and not the blocked kernel's loops and
custom gradient (it all-gathers q, k and v and computes every head on every device). Such a
backend runs here once per shard: the batch split over the mesh's batch axes, the heads over
its head axis. Each shard's call is an ordinary attention call over its own examples and heads,
so values and gradients equal one device's, and no input is gathered.

Mesh convention (``attnjax.training.make_mesh``): batch over the axes named ``"data"`` and
``"fsdp"``, heads over ``"model"``. An axis is used only when its size divides what it splits;
when only N (not K) divides the head axis, every shard gets all K key/value heads and picks
the ones its query heads read (their gradients are summed over the head axis).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from attnjax.functional.call import Call, Result

__all__ = ["BATCH_AXES", "HEAD_AXIS", "context_mesh", "run_per_shard"]

BATCH_AXES = ("data", "fsdp")
HEAD_AXIS = "model"


def context_mesh(call: Call, mesh=None):
    """The mesh to shard over: ``mesh`` if given, else the one set with ``jax.set_mesh``,
    else the query's (its sharding's mesh, also inside ``jax.jit``); None when there is no
    mesh of more than one device."""
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        sharding = getattr(jax.typeof(call.query), "sharding", None)
        mesh = getattr(sharding, "mesh", None)
    if mesh is None or mesh.empty or math.prod(mesh.axis_sizes) == 1:
        return None
    return mesh


def run_per_shard(run: Callable[[Call], Result], call: Call, mesh) -> Result:
    """``run(call)`` once per shard of ``mesh`` (batch and head axes as the module says)."""
    manual = jax.sharding.AxisType.Manual  # axes already split by an enclosing shard_map
    sizes = {
        name: size
        for name, size, kind in zip(mesh.axis_names, mesh.axis_sizes, mesh.axis_types, strict=True)
        if kind != manual
    }
    batch_axes = _batch_axes(sizes, call.batch)
    head_axis = HEAD_AXIS if sizes.get(HEAD_AXIS, 1) > 1 else None
    if head_axis is not None and call.num_heads % sizes[head_axis]:
        head_axis = None
    if not batch_axes and head_axis is None:
        return run(call)
    batch = batch_axes or None
    whole_kv = head_axis is not None and call.num_kv_heads % sizes[head_axis] != 0
    specs = _call_specs(call, batch, head_axis, whole_kv)
    if whole_kv:
        run = _picking_kv_heads(run, head_axis, group=call.num_heads // call.num_kv_heads)
    out_specs = Result(
        out=P(batch, None, head_axis, None),
        pattern=P(batch, head_axis, None, None),
        lse=P(batch, head_axis, None),
    )
    if jax.sharding.AxisType.Explicit in mesh.axis_types:  # shard_map wants exact specs
        with jax.sharding.use_abstract_mesh(_abstract(mesh)):
            call = jax.tree.map(_reshard, specs, call, is_leaf=lambda x: isinstance(x, P))
    sharded = jax.shard_map(run, mesh=mesh, in_specs=(specs,), out_specs=out_specs, check_vma=False)
    return sharded(call)


def _abstract(mesh):
    return getattr(mesh, "abstract_mesh", mesh)


def _reshard(spec, x):
    return x if x is None else jax.sharding.reshard(x, spec)


def _batch_axes(sizes: dict, batch: int) -> tuple[str, ...]:
    axes, product = [], 1
    for name in BATCH_AXES:
        size = sizes.get(name, 1)
        if size > 1 and batch % (product * size) == 0:
            axes.append(name)
            product *= size
    return tuple(axes)


def _picking_kv_heads(run, head_axis: str, group: int):
    """``run`` for a shard holding all K key/value heads but only some query heads: each of
    its query heads gets its own copy of the key/value head it reads (G = 1 in the shard)."""

    def run_shard(call: Call) -> Result:
        local_heads = call.query.shape[2]
        first = jax.lax.axis_index(head_axis) * local_heads
        kv_heads = (first + jnp.arange(local_heads)) // group
        key, value = (jnp.take(x, kv_heads, axis=2) for x in (call.key, call.value))
        return run(call.replace(key=key, value=value))

    return run_shard


def _call_specs(call: Call, batch, head_axis, whole_kv: bool) -> Call:
    masking = call.masking

    def grid(x):  # [b, n, t, s], b and n full or 1
        if x is None:
            return P()
        return P(batch if x.shape[0] > 1 else None, head_axis if x.shape[1] > 1 else None)

    masking_specs = dataclasses.replace(
        masking,
        query_lengths=P(batch),
        key_lengths=P(batch),
        query_segment_ids=P(batch, None),
        key_segment_ids=P(batch, None),
        mask=grid(masking.mask),
        bias=grid(masking.bias),
    )
    heads = P(batch, None, head_axis, None)
    kv = P(batch, None, None, None) if whole_kv else heads
    return call.replace(query=heads, key=kv, value=kv, masking=masking_specs, dropout_rng=P())
