"""The train step of a run config, compiled for a mesh of (compile-only) devices."""

from __future__ import annotations

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from attnjax.training import run_config, sharding, state, step

__all__ = ["compile_train_step"]


def compile_train_step(config, mesh: Mesh, *, platform: str, compiler_options=None):
    """Lower and compile ``config``'s train step (``configs/train.py`` or a sweep config:
    model, task, ``train.batch_size``) for ``mesh``, as ``train_and_evaluate`` builds it:
    state sharded by ``attnjax.training.state_shardings``, batch over ``data``. Nothing runs
    on ``mesh``'s devices: the model is initialised on the host and only its shapes are used.

    ``platform``: the platform ``mesh``'s devices compile for (``"tpu"``, ``"cuda"``);
    ``compiler_options(platform)`` gives the step's XLA options, as in ``train_and_evaluate``
    (None: XLA's own). Returns the compiled step.
    """
    task, model_config = run_config.check_run_config(config)
    split = state.init_model(model_config, config.train.seed)
    tx = run_config.optimizer_for(config.train)
    train_state = jax.eval_shape(lambda p: state.init_train_state(p, tx), split.params)
    shardings = sharding.state_shardings(train_state, mesh)
    train_state = jax.tree.map(_placed, train_state, shardings)
    batch = task.batch(0, config.train.batch_size)
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    batch = jax.tree.map(lambda x: _placed(x, batch_sharding), batch)
    train_step = step.make_train_step(
        split.graphdef,
        split.rest,
        tx,
        state_sharding=shardings,
        compiler_options=None if compiler_options is None else compiler_options(platform),
    )
    return train_step.lower(train_state, batch).compile()


def _placed(x, sharding_):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_)
