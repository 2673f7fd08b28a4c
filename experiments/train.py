"""Train one model: ``python -m experiments.train --config=configs/train.py --workdir=DIR``.

Re-running the same command resumes from the newest checkpoint in ``DIR``.
"""

from __future__ import annotations

from absl import flags, logging
from ml_collections import config_flags

from experiments.common import CPU_TUNE, log_devices, run

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/train.py", "Run config file (variants: configs/train.py:induction).",
    lock_config=True,
)  # fmt: skip
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints and metrics go.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if not _WORKDIR.value:
        raise ValueError("--workdir is required")
    from attnjax.training import sharding

    sharding.initialize_distributed(config.distributed)
    log_devices()
    from attnjax.perf import cpu
    from attnjax.training.loop import train_and_evaluate

    options = cpu.compiler_options if CPU_TUNE.value else None
    result = train_and_evaluate(config, _WORKDIR.value, compiler_options=options)
    logging.info("Finished: %s", result)
    known = lambda value, form: "?" if value is None else format(value, form)  # None: unknown
    print(
        f"{result.workdir}: eval loss {result.eval_loss:.4f}, accuracy {result.eval_accuracy:.3f}, "
        f"{known(result.tokens_per_s, '.0f')} tokens/s, "
        f"compile {known(result.compile_s, '.1f')} s, wall {known(result.wall_s, '.1f')} s"
    )


if __name__ == "__main__":
    run(main)
