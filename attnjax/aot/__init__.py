"""Compiling for TPU and NVIDIA GPU without the device, and reading what XLA made.

XLA compiles for a named topology without its hardware: ``libtpu`` (``uv sync --group tpu``)
describes TPU slices, the CUDA plugin (``uv sync --group cuda``) builds GPUs from a target
config text proto (``targets/h100.txtpb``, ``targets/h200.txtpb``; values cited there). A
program is then lowered with ``jax.ShapeDtypeStruct`` arguments sharded over a mesh of these
devices and compiled; nothing runs. Example, in a process without network (libtpu may query a
cloud metadata server otherwise)::

    unshare -n -- env TPU_SKIP_MDS_QUERY=1 TPU_WORKER_HOSTNAMES=localhost JAX_PLATFORMS=cpu \\
        uv run --group tpu python -c '
    import jax, jax.numpy as jnp, attnjax
    from attnjax import aot
    mesh = aot.mesh(aot.tpu_topology("v5e:2x2").devices, data=4)
    q = aot.sharded_struct((8, 256, 4, 128), jnp.bfloat16, mesh, ("data", None, None, None))
    compiled = aot.compile(lambda q: attnjax.dot_product_attention(q, q, q), q)
    print(aot.kernels(compiled.as_text()), aot.output_bytes(compiled))'

Nothing here imports libtpu or the plugin at import time; JAX loads them when a topology is
asked for.
"""

from __future__ import annotations

import math
import pathlib
import re
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "GPU_TARGETS",
    "KERNEL_MARKERS",
    "all_gathers",
    "compile",
    "gpu_target_config",
    "gpu_topology",
    "kernels",
    "mesh",
    "output_bytes",
    "sharded_struct",
    "tpu_topology",
]

_TARGETS = pathlib.Path(__file__).parent / "targets"
GPU_TARGETS: tuple[str, ...] = ("h100", "h200")
# What each kernel leaves in compiled HLO text: the Mosaic (Pallas TPU) custom call and
# cuDNN's fused attention custom calls (forward "__cudnn$fmhaSoftmax...", backward
# "__cudnn$fmhaSoftmaxBackward...").
KERNEL_MARKERS: dict[str, str] = {"pallas_tpu": "tpu_custom_call", "cudnn": "__cudnn$fmha"}


def tpu_topology(name: str):
    """Compile-only TPU devices of a slice: ``"v5e:2x2"`` (4 chips), ``"v4:2x2x1"``,
    ``"v5p:2x2x1"``, ``"v6e:2x2"``; ``"v5e:1x1"`` for one chip. Needs libtpu
    (``uv sync --group tpu``). Returns a ``TopologyDescription`` (``.devices``)."""
    from jax.experimental import topologies

    if not re.fullmatch(r"v\d+[a-z]*:\d+(x\d+)+", name):
        raise ValueError(f"name={name!r} is not a TPU topology like 'v5e:2x2' or 'v4:2x2x1'")
    chips = [int(x) for x in name.split(":")[1].split("x")]
    kwargs = {}
    if int(np.prod(chips)) == 1:  # one chip is a host of its own
        kwargs["chips_per_host_bounds"] = (1, 1, 1)
    return topologies.get_topology_desc(topology_name=name, platform="tpu", **kwargs)


def gpu_target_config(target: str) -> str:
    """The GPU target config text proto: a name in ``GPU_TARGETS`` or a ``.txtpb`` path."""
    if target in GPU_TARGETS:
        return (_TARGETS / f"{target}.txtpb").read_text()
    path = pathlib.Path(target)
    if path.suffix == ".txtpb" and path.is_file():
        return path.read_text()
    raise ValueError(f"target={target!r} is neither one of {GPU_TARGETS} nor a .txtpb file")


def gpu_topology(target: str = "h200", num_devices: int = 8):
    """``num_devices`` compile-only NVIDIA GPUs of one host, described by ``target`` (see
    :func:`gpu_target_config`). Needs the CUDA plugin (``uv sync --group cuda``)."""
    from jax.experimental import topologies

    if not isinstance(num_devices, int) or num_devices < 1:
        raise ValueError(f"num_devices={num_devices!r} must be a positive int")
    config = gpu_target_config(target)
    return topologies.get_topology_desc(
        platform="cuda", topology=f"1x1x{num_devices}", target_config=config
    )


def mesh(devices: Sequence, *, data: int = 1, model: int = 1, fsdp: int = 1) -> Mesh:
    """A ``(data, fsdp, model)`` mesh (the axes of ``attnjax.training``) over the first
    ``data * fsdp * model`` of ``devices``."""
    if data < 1 or model < 1 or fsdp < 1 or data * fsdp * model > len(devices):
        raise ValueError(
            f"data={data} x fsdp={fsdp} x model={model} must be positive and at most "
            f"{len(devices)} devices"
        )
    grid = np.array(list(devices)[: data * fsdp * model]).reshape(data, fsdp, model)
    return Mesh(grid, ("data", "fsdp", "model"))


def sharded_struct(shape, dtype, mesh: Mesh, spec: Sequence[str | None] = ()):
    """A ``jax.ShapeDtypeStruct`` placed on ``mesh`` with ``PartitionSpec(*spec)``."""
    sharding = NamedSharding(mesh, PartitionSpec(*spec))
    return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def compile(fn: Callable, *args, **jit_kwargs):
    """``jax.jit(fn, **jit_kwargs).lower(*args).compile()``: args are ``ShapeDtypeStruct``s
    (see :func:`sharded_struct`) or arrays; the platform is that of their devices."""
    return jax.jit(fn, **jit_kwargs).lower(*args).compile()


_DEFINITION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\w+\[([\d,]*)\]")
_GATHER = re.compile(r"\ball-gather(?:-start)?\(([^)]*)\)")


def all_gathers(hlo_text: str, operand_shapes: Sequence[tuple[int, ...]] | None = None) -> int:
    """How many all-gathers compiled HLO text holds; with ``operand_shapes``, only those that
    gather an operand of one of these (per-device) shapes, e.g. the shards of q, k and v."""
    shapes = {}  # instruction name -> array shape (compiled HLO prints operands by name)
    for line in hlo_text.splitlines():
        match = _DEFINITION.match(line)
        if match:
            shapes[match.group(1)] = _dims(match.group(2))
    wanted = None if operand_shapes is None else {tuple(s) for s in operand_shapes}
    count = 0
    for line in hlo_text.splitlines():
        match = _GATHER.search(line)
        if not match:
            continue
        operands = [op.strip().split()[-1].lstrip("%") for op in match.group(1).split(",")]
        if wanted is None or any(shapes.get(op) in wanted for op in operands if op):
            count += 1
    return count


def _dims(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def kernels(hlo_text: str) -> dict[str, bool]:
    """Which of ``KERNEL_MARKERS``' kernels the compiled program calls."""
    return {name: marker in hlo_text for name, marker in KERNEL_MARKERS.items()}


def output_bytes(compiled) -> int:
    """Bytes of the compiled program's outputs on one device: each output's shard, by the
    output shardings XLA chose. (``compiled.memory_analysis().output_size_in_bytes`` is
    the same plus the buffer table: a few hundred bytes.)"""
    outs = jax.tree.leaves(compiled.out_info)
    return sum(math.prod(o.sharding.shard_shape(o.shape)) * o.dtype.itemsize for o in outs)
