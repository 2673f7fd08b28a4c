"""Sweep heads × layers: ``python -m experiments.sweep`` (default: configs/sweep.py).

Writes one sub-workdir per point, ``results.csv``, PNG plots, and prints a summary table.
Re-running skips finished points; ``--config.sweep.shard=i/n`` runs every n-th point;
``--merge`` only gathers the points found in ``--workdir`` (e.g. shards) into results and plots;
points of the sweep recorded there (``sweep_config.json``) with no result yet are listed as
missing. Exits 1 if no point finished ok.
"""

from __future__ import annotations

from absl import flags, logging
from ml_collections import config_flags

from experiments.common import CPU_TUNE, log_devices, run

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/sweep.py", "Sweep config file (configs/sweep.py:fixed_head_dim).",
    lock_config=True,
)  # fmt: skip
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory (default: printed at start).")
_MERGE = flags.DEFINE_bool("merge", False, "Only merge the points found in --workdir and plot.")
_CACHE = flags.DEFINE_string("compilation_cache", None, "Persistent JAX compilation cache dir.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    from attnjax.training import sharding
    from attnjax.training import sweep as sweep_lib
    from attnjax.viz.sweep import save_sweep_plots

    sharding.initialize_distributed(config.distributed)
    workdir = _WORKDIR.value or sweep_lib.default_workdir(config)
    print(f"sweep workdir: {workdir}", flush=True)
    if _MERGE.value:  # the points of the sweep recorded there, not of --config
        rows = sweep_lib.merge_results(workdir, sweep_lib.recorded_points(workdir))
    else:
        log_devices()
        logging.info("compilation cache: %s", sweep_lib.enable_compilation_cache(_CACHE.value))
        from attnjax.perf import cpu

        options = cpu.compiler_options if CPU_TUNE.value else None
        rows = sweep_lib.run_sweep(config, workdir, compiler_options=options)
    plots = save_sweep_plots(rows, workdir)
    threshold = config.train.get("phase_change_threshold")
    telemetry = sweep_lib.save_sweep_telemetry(workdir, threshold)
    plots += [telemetry] if telemetry else []
    print(sweep_lib.format_results(rows))
    print(f"results: {workdir}/results.csv; plots: {', '.join(p.name for p in plots)}")
    if not any(row["status"] == "ok" for row in rows):
        raise ValueError(f"no point of the sweep in {workdir} finished ok (see the table above)")


if __name__ == "__main__":
    run(main)
