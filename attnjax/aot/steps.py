"""The train step of a run config, compiled for a mesh of (compile-only) devices.

Everything is abstract: the model is built with ``nnx.eval_shape`` (shapes only, nothing
allocated, so a 175B model is planned on a laptop), every input is a ``jax.ShapeDtypeStruct``
carrying its sharding, and the step is lowered and compiled for the mesh's platform.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from attnjax.data.tasks import Batch
from attnjax.models import DecoderLM, ModelConfig
from attnjax.training import run_config, sharding, state, step

__all__ = [
    "abstract_model",
    "compile_train_step",
    "lower_train_step",
    "per_device_bytes",
    "token_batch",
]


def abstract_model(model_config: ModelConfig, seed: int = 0) -> state.SplitModel:
    """``attnjax.training.init_model`` without allocating: parameters are
    ``ShapeDtypeStruct``s; the few other variables (dropout RNG state) are real, as the step
    closes over them."""
    model = nnx.eval_shape(lambda: DecoderLM(model_config, rngs=nnx.Rngs(seed)))
    model.eval()
    eval_graphdef = nnx.graphdef(model)
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return state.SplitModel(graphdef, eval_graphdef, params, jax.tree.map(_concrete, rest))


def _concrete(leaf):
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):  # dropout's keys: reseeded every step
        return jax.random.split(jax.random.key(0), math.prod(leaf.shape)).reshape(leaf.shape)
    return jnp.zeros(leaf.shape, leaf.dtype)


def token_batch(batch_size: int, seq_len: int) -> Batch:
    """A language-model batch's shapes: ``inputs``, ``targets`` [B, T] int32, ``loss_mask``
    [B, T] float32 (the ``attnjax.data`` layout)."""
    tokens = jax.ShapeDtypeStruct((batch_size, seq_len), np.int32)
    return Batch(tokens, tokens, jax.ShapeDtypeStruct((batch_size, seq_len), np.float32))


def lower_train_step(
    model_config: ModelConfig,
    tx,
    batch: Batch,
    mesh: Mesh,
    *,
    seed: int = 0,
    compiler_options=None,
):
    """``make_train_step``'s step lowered for ``mesh`` (not compiled): the train state sharded
    by ``state_shardings`` (``model`` and ``fsdp`` rules), ``batch`` (shapes) over
    ``data x fsdp``. ``compiler_options``: XLA options for the step (None: XLA's own).
    Returns ``(lowered, (state, batch))``: the step and its placed ``ShapeDtypeStruct``s."""
    split = abstract_model(model_config, seed)
    train_state = jax.eval_shape(lambda p: state.init_train_state(p, tx), split.params)
    shardings = sharding.state_shardings(train_state, mesh)
    train_state = jax.tree.map(_placed, train_state, shardings)
    if batch.inputs.shape[0] % sharding.batch_shards(mesh):
        raise ValueError(
            f"batch_size={batch.inputs.shape[0]} must be divisible by the mesh's batch shards "
            f"(data x fsdp = {sharding.batch_shards(mesh)})"
        )
    batch_sharding = NamedSharding(mesh, sharding.batch_spec(mesh))
    batch = jax.tree.map(lambda x: _placed(x, batch_sharding), batch)
    lowered_args = (train_state, batch)
    dropout = model_config.dropout_rate > 0 or model_config.attention_dropout_rate > 0
    train_step = step.make_train_step(
        split.graphdef,
        split.rest,
        tx,
        dropout_seed=seed if dropout else None,
        state_sharding=shardings,
        compiler_options=compiler_options,
    )
    return train_step.lower(*lowered_args), lowered_args


def per_device_bytes(structs) -> int:
    """Bytes one device holds of ``ShapeDtypeStruct``s placed by their shardings (the largest
    shard when shards differ in size)."""
    total = 0
    for x in jax.tree.leaves(structs):
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        total += math.prod(shape) * np.dtype(x.dtype).itemsize
    return total


def compile_train_step(config, mesh: Mesh, *, platform: str, compiler_options=None):
    """Lower and compile ``config``'s train step (``configs/train.py`` or a sweep config:
    model, task, ``train.batch_size``) for ``mesh``, as ``train_and_evaluate`` builds it:
    state sharded by ``attnjax.training.state_shardings``, batch over ``data x fsdp``. Nothing
    is allocated: the model is built abstractly (:func:`abstract_model`).

    ``platform``: the platform ``mesh``'s devices compile for (``"tpu"``, ``"cuda"``);
    ``compiler_options(platform)`` gives the step's XLA options, as in ``train_and_evaluate``
    (None: XLA's own). Returns the compiled step.
    """
    devices = mesh.devices.flat
    task, model_config = run_config.check_run_config(config, devices=devices)
    batch = jax.tree.map(_shape_of, task.batch(0, config.train.batch_size))
    lowered, _ = lower_train_step(
        model_config,
        run_config.optimizer_for(config.train),
        batch,
        mesh,
        seed=config.train.seed,
        compiler_options=None if compiler_options is None else compiler_options(platform),
    )
    return lowered.compile()


def _shape_of(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _placed(x, sharding_):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_)
