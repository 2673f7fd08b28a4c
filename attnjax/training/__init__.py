"""Training: train state, jitted steps, the loop, checkpoints, metrics, sharding, sweeps and their
statistics over seeds (``sweep_stats``)."""

from attnjax.training import sweep_stats
from attnjax.training.checkpoint import Checkpointer, load_checkpoint, load_trained_model
from attnjax.training.loop import RunResult, train_and_evaluate
from attnjax.training.metrics import MetricsWriter, read_metrics
from attnjax.training.sharding import make_mesh, shard_batch, state_shardings
from attnjax.training.state import TrainState, init_model, init_train_state, make_optimizer
from attnjax.training.step import make_eval_step, make_train_step, masked_metrics, pool_metrics
from attnjax.training.sweep import format_results, merge_results, run_sweep

__all__ = [
    "Checkpointer",
    "MetricsWriter",
    "RunResult",
    "TrainState",
    "format_results",
    "init_model",
    "load_checkpoint",
    "load_trained_model",
    "init_train_state",
    "make_eval_step",
    "make_mesh",
    "make_optimizer",
    "make_train_step",
    "masked_metrics",
    "pool_metrics",
    "merge_results",
    "read_metrics",
    "run_sweep",
    "shard_batch",
    "state_shardings",
    "sweep_stats",
    "train_and_evaluate",
]
