"""Data and model (Megatron-style) parallelism with JAX's own engine.

A ``jax.sharding.Mesh`` with axes ``("data", "model")``: the batch is split over ``data``;
attention heads and the MLP hidden width are split over ``model``:

- ``attention/query`` [D, N, H], ``key`` [D, K, H], ``value_down`` [D, K, R]: head axis;
- ``attention/value_up`` [N, R, D]: head axis (each device sums its heads' outputs);
- ``mlp/up/kernel`` [D, F] columns and ``mlp/up/bias`` [F]; ``mlp/down/kernel`` [F, D] rows;
- everything else (embeddings, norms, output biases) is replicated.

The rules match parameter paths, so the same rules place the optimizer's moments (whose
paths end with the parameter's path). Blocks stacked for a scan (``scan_layers``: paths
``blocks/attention/query``, no layer index, shape [L, ...]) get the same spec behind an
unsharded leading L axis (each scan step reads one layer whole). A leaf whose axis does not
divide by the ``model`` axis size is replicated instead. XLA inserts the collectives.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "SHARDING_RULES",
    "initialize_distributed",
    "make_mesh",
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


def make_mesh(data: int = 1, model: int = 1, devices=None) -> Mesh:
    """A ``(data, model)`` mesh over the first ``data * model`` devices.

    ``data=-1`` uses all devices left over after ``model``.
    """
    devices = jax.devices() if devices is None else list(devices)
    available = len(devices)
    if model < 1:
        raise ValueError(f"mesh.model must be positive, got {model}")
    if data < 1 and data != -1:
        raise ValueError(f"mesh.data must be positive (or -1: all devices left), got {data}")
    needed = model * max(data, 1)  # data=-1 needs one device per model shard at least
    if needed > available:
        raise ValueError(
            f"mesh.data={data} x mesh.model={model} asks for {needed} devices but "
            f"only {available} exist"
        )
    if data == -1:
        data = available // model
    grid = np.array(devices[: data * model]).reshape(data, model)
    return Mesh(grid, ("data", "model"))


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


def partition_spec(path: str, shape: tuple[int, ...], model_size: int) -> PartitionSpec:
    """The spec of a leaf at ``path`` ("blocks/0/attention/query") with ``shape``.

    A stacked leaf ("blocks/attention/query", shape [L, ...]) gets ``P(None, *spec)``.
    """
    if _STACKED.search(path) and shape:
        inner = partition_spec(path.replace("blocks/", "blocks/0/"), shape[1:], model_size)
        return P(None, *inner) if len(inner) else P()
    for pattern, spec in SHARDING_RULES:
        if re.search(pattern, path) and len(spec) == len(shape):
            divisible = all(
                axis is None or shape[i] % model_size == 0 for i, axis in enumerate(spec)
            )
            return spec if divisible else P()
    return P()


def state_shardings(tree, mesh: Mesh):
    """``NamedSharding`` for every leaf of ``tree`` (params, optimizer state, train state)."""
    model_size = mesh.shape["model"]

    def sharding(path, leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        return NamedSharding(mesh, partition_spec(path_string(path), shape, model_size))

    return jax.tree_util.tree_map_with_path(sharding, tree)


def shard_batch(batch, mesh: Mesh):
    """Put a host batch (arrays [B, ...]) on the mesh, split over ``data``.

    Every process holds the whole global batch (it is a pure function of the step) and
    contributes the rows of its own devices.
    """
    data_size = mesh.shape["data"]
    sharding = NamedSharding(mesh, P("data"))

    def put(x):
        if x.shape[0] % data_size:
            raise ValueError(
                f"train.batch_size={x.shape[0]} must be divisible by mesh.data={data_size}"
            )
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, batch)


def initialize_distributed(enabled: bool) -> None:
    """``jax.distributed.initialize()`` (cluster auto-detection) when ``enabled``; call first."""
    if enabled:
        jax.distributed.initialize()
