"""Parameter counts over a grid of head counts x layer counts (nothing is built or trained).

    uv run python -m experiments.count_sweep --config=configs/gpt2.py:small \
        --heads=1,2,4,8,12,16 --layers=1,2,4,8,12 --fixed=model_dim --workdir=/tmp/count_sweep

``--fixed=model_dim`` keeps the head width D/N, ``--fixed=head_dim`` keeps the config's head width
H (attention width N*H grows; D, MLP and embeddings stay): ``attnjax.models.point_config``, the
same models ``experiments.sweep`` trains.
Prints the table and writes ``count_sweep_<fixed>.csv`` and ``.png`` to ``--workdir``.
"""

from __future__ import annotations

import pathlib

from absl import flags
from ml_collections import config_flags

from attnjax import paths
from experiments.common import run

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/gpt2.py", "Config file with a `model` section (the base of the grid).",
    lock_config=True,
)  # fmt: skip
_HEADS = flags.DEFINE_list("heads", ["1", "2", "4", "8", "12", "16"], "Head counts.")
_LAYERS = flags.DEFINE_list("layers", ["1", "2", "4", "8", "12"], "Layer counts.")
_FIXED = flags.DEFINE_enum("fixed", "model_dim", ["model_dim", "head_dim"], "What stays fixed.")
_CONVENTION = flags.DEFINE_enum("convention", "full", ["full", "3b1b"], "Counting convention.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where the CSV and PNG go (default: $ATTNJAX_RUNS/count_sweep)."
)


def _ints(name: str, values: list[str]) -> list[int]:
    try:
        return [int(v) for v in values]
    except ValueError:
        raise ValueError(f"--{name} must be a comma-separated list of ints, got {values}") from None


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    from attnjax.accounting import sweep
    from attnjax.models import ModelConfig
    from attnjax.viz.params import sweep_count_plot

    base = ModelConfig.from_config(_CONFIG.value.model)
    rows = sweep.count_sweep(
        base,
        _ints("heads", _HEADS.value),
        _ints("layers", _LAYERS.value),
        fixed=_FIXED.value,
        convention=_CONVENTION.value,
    )
    print(sweep.format_sweep_table(rows))
    workdir = pathlib.Path(_WORKDIR.value or paths.runs_dir("count_sweep"))
    stem = f"count_sweep_{_FIXED.value}"
    csv_path = sweep.write_sweep_csv(rows, workdir / f"{stem}.csv")
    png_path = workdir / f"{stem}.png"
    sweep_count_plot(rows, png_path, title=f"parameters, fixed {_FIXED.value}")
    print(f"wrote {csv_path} and {png_path}")


if __name__ == "__main__":
    run(main)
