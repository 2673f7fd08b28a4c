"""Data, fully sharded data (ZeRO-3) and model (Megatron-style) parallelism with JAX's engine.

A ``jax.sharding.Mesh`` with axes ``("data", "fsdp", "model")``: the batch is split over
``data x fsdp``; attention heads and the MLP hidden width are split over ``model``:

- ``attention/query`` [D, N, H], ``key`` [D, K, H], ``value_down`` [D, K, R]: head axis;
- ``attention/value_up`` [N, R, D]: head axis (each device sums its heads' outputs);
- ``mlp/up/kernel`` [D, F] columns and ``mlp/up/bias`` [F]; ``mlp/down/kernel`` [F, D] rows;
- everything else (embeddings, norms, output biases) is replicated.

The rules match parameter paths, so the same rules place the optimizer's moments (whose
paths end with the parameter's path). Blocks stacked for a scan (``scan_layers``: paths
``blocks/attention/query``, no layer index, shape [L, ...]) get the same spec behind the
leading L axis (each scan step reads one layer). A leaf whose axis does not divide by the
``model`` axis size is replicated instead.

``fsdp`` (ZeRO-3, as MaxText's axis of that name): every parameter and optimizer moment is
also split over ``fsdp`` on its largest axis that ``model`` does not split and that ``fsdp``
divides (the first such axis on a tie; a stacked layer axis ``L`` only when no other axis
divides); a leaf with no such axis stays replicated over ``fsdp``. Each device then holds
``1 / (fsdp x model)`` of the state; XLA gathers a layer's weights where the step uses them
and reduce-scatters their gradients. ``fsdp=1`` (the default) is plain data parallelism. XLA
inserts the collectives.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "BATCH_AXES",
    "MESH_AXES",
    "SHARDING_RULES",
    "batch_shards",
    "batch_spec",
    "initialize_distributed",
    "make_mesh",
    "mesh_from_config",
    "partition_spec",
    "path_string",
    "shard_batch",
    "state_shardings",
]

P = PartitionSpec

# (regex searched in "a/b/c" paths, spec). First match wins.
SHARDING_RULES: tuple[tuple[str, PartitionSpec], ...] = (
    (r"attention/(query|key|value_down)$", P(None, "model", None)),
    (r"attention/value_up$", P("model", None, None)),
    (r"attention/(query|key|value)_bias$", P("model", None)),
    (r"mlp/up/kernel$", P(None, "model")),
    (r"mlp/up/bias$", P("model")),
    (r"mlp/down/kernel$", P("model", None)),
)


MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")  # the batch is split over both (attnjax.functional.sharded too)


def make_mesh(data: int = 1, model: int = 1, devices=None, *, fsdp: int = 1) -> Mesh:
    """A ``(data, fsdp, model)`` mesh over the first ``data * fsdp * model`` devices.

    ``data=-1`` uses all devices left over after ``fsdp * model``.
    """
    devices = jax.devices() if devices is None else list(devices)
    available = len(devices)
    if not isinstance(model, int) or model < 1:
        raise ValueError(f"mesh.model must be a positive int, got {model!r}")
    if not isinstance(fsdp, int) or fsdp < 1:
        raise ValueError(f"mesh.fsdp must be a positive int, got {fsdp!r}")
    if not isinstance(data, int) or (data < 1 and data != -1):
        raise ValueError(f"mesh.data must be positive (or -1: all devices left), got {data!r}")
    needed = model * fsdp * max(data, 1)  # data=-1 needs one device per shard at least
    if needed > available:
        asked = f"mesh.data={data} x mesh.model={model}"
        if fsdp != 1:
            asked = f"mesh.data={data} x mesh.fsdp={fsdp} x mesh.model={model}"
        raise ValueError(f"{asked} asks for {needed} devices but only {available} exist")
    if data == -1:
        data = available // (model * fsdp)
    grid = np.array(devices[: data * fsdp * model]).reshape(data, fsdp, model)
    return Mesh(grid, MESH_AXES)


def mesh_from_config(mesh_config, devices=None) -> Mesh:
    """``make_mesh`` of a config's ``mesh`` section (``data``, ``model``; ``fsdp``, absent in
    configs older than the axis, is 1)."""
    fsdp = mesh_config.get("fsdp", 1) if hasattr(mesh_config, "get") else 1
    return make_mesh(mesh_config.data, mesh_config.model, devices, fsdp=fsdp)


def batch_shards(mesh: Mesh) -> int:
    """How many ways the batch is split: ``data x fsdp`` (axes the mesh lacks count 1)."""
    return int(np.prod([mesh.shape.get(axis, 1) for axis in BATCH_AXES]))


def batch_spec(mesh: Mesh) -> PartitionSpec:
    """The batch's ``PartitionSpec``: its leading axis over the mesh's batch axes."""
    axes = tuple(axis for axis in BATCH_AXES if axis in mesh.shape)
    return P(axes if len(axes) > 1 else axes[0])


def path_string(path) -> str:
    """A pytree key path as ``"blocks/0/attention/query"`` (NNX's ``value`` entries dropped)."""
    names = []
    for entry in path:
        name = getattr(entry, "key", getattr(entry, "idx", getattr(entry, "name", None)))
        if name is not None and name != "value":
            names.append(str(name))
    return "/".join(names)


# A leaf of stacked blocks: "blocks/" followed by a name, not by a layer index.
_STACKED = re.compile(r"(^|/)blocks/[^/\d][^/]*(/|$)")


def partition_spec(
    path: str,
    shape: tuple[int, ...],
    model_size: int,
    fsdp_size: int = 1,
    *,
    stacked: int | None = None,
) -> PartitionSpec:
    """The spec of a leaf at ``path`` ("blocks/0/attention/query") with ``shape``: the
    ``model`` rule of ``SHARDING_RULES`` (matched on the trailing axes, after ``stacked``
    leading layer axes), then ``fsdp`` on the largest other axis it divides (module doc).

    ``stacked``: leading layer axes; default 1 for stacked blocks ("blocks/attention/query",
    shape [L, ...]), else 0.
    """
    if stacked is None:
        stacked = 1 if _STACKED.search(path) and shape else 0
    axes: list[str | None] = [None] * len(shape)
    for pattern, spec in SHARDING_RULES:
        if re.search(pattern, path) and len(spec) == len(shape) - stacked:
            if all(a is None or shape[stacked + i] % model_size == 0 for i, a in enumerate(spec)):
                axes[stacked:] = list(spec)
            break
    if fsdp_size > 1:
        free = [i for i, a in enumerate(axes) if a is None and shape[i] % fsdp_size == 0]
        # largest first; layer axes last (slicing a layer out of them would gather them all)
        free.sort(key=lambda i: (i < stacked, -shape[i], i))
        if free:
            axes[free[0]] = "fsdp"
    return P(*axes) if any(axes) else P()


def state_shardings(tree, mesh: Mesh):
    """``NamedSharding`` for every leaf of ``tree`` (params, optimizer state, train state)."""
    model_size = mesh.shape.get("model", 1)
    fsdp_size = mesh.shape.get("fsdp", 1)

    def sharding(path, leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        spec = partition_spec(path_string(path), shape, model_size, fsdp_size)
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(sharding, tree)


def shard_batch(batch, mesh: Mesh):
    """Put a host batch (arrays [B, ...]) on the mesh, split over ``data x fsdp``.

    Every process holds the whole global batch (it is a pure function of the step) and
    contributes the rows of its own devices.
    """
    shards = batch_shards(mesh)
    sharding = NamedSharding(mesh, batch_spec(mesh))

    def put(x):
        if x.shape[0] % shards:
            raise ValueError(
                f"train.batch_size={x.shape[0]} must be divisible by the mesh's batch shards "
                f"(mesh.data x mesh.fsdp = {shards})"
            )
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, batch)


def initialize_distributed(enabled: bool) -> None:
    """``jax.distributed.initialize()`` (cluster auto-detection) when ``enabled``; call first."""
    if enabled:
        jax.distributed.initialize()
