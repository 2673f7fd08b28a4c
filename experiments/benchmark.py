"""Speed and memory of attention and of a training step, against peers measured in the same run.

    uv run python -m experiments.benchmark                      # everything (minutes)
    uv run python -m experiments.benchmark --suite=attention --cases=b4_t1024 --modes=fwd_bwd \\
        --causal=true --json=/tmp/bench.json
    uv run python -m experiments.benchmark --suite=train --train_settings=l4_d128_t64_b12
    uv run python -m experiments.benchmark --suite=interventions   # ablation_scan vs a loop
    uv run python -m experiments.benchmark --suite=replicas        # S seeds vmapped vs in turn

What is timed and how (conventions for FLOPs, memory, timing; the default run's length): see
``attnjax.bench``. Compare two commits with ``scripts/before_after.py``.
"""

import dataclasses

from absl import flags

from attnjax import bench
from experiments.common import CPU_TUNE, log_devices, run

_CASES, _TRAIN = list(bench.CASES), list(bench.TRAIN_SETTINGS)
flags.DEFINE_enum("suite", "all", bench.SUITES, "Which suite(s) to run.")
flags.DEFINE_list("cases", list(bench.DEFAULT_CASES), f"Attention cases: {_CASES}.")
flags.DEFINE_list("modes", list(bench.MODES), "fwd and/or fwd_bwd.")
flags.DEFINE_enum("causal", "both", ["both", "true", "false"], "Masking to time.")
flags.DEFINE_list(
    "implementations", None, "attnjax implementations (and 'auto'); default: all on this backend."
)
flags.DEFINE_list("peers", list(bench.PEERS), f"Peers to time: any of {list(bench.PEERS)}.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Input dtype.")
flags.DEFINE_integer("repeats", 5, "At most this many timed calls per row.")
flags.DEFINE_float("budget_s", 2.0, "At most about this many seconds of timed calls.")
flags.DEFINE_float(
    "max_memory_gib", None, "Skip JAX rows whose compiled peak is larger (default: 80% available)."
)
flags.DEFINE_list(
    "train_settings", list(bench.DEFAULT_TRAIN_SETTINGS), f"Train settings: {_TRAIN}."
)
flags.DEFINE_integer("train_repeats", 3, "Timed runs of a setting's steps.")
flags.DEFINE_integer("matmul_size", 2048, "Size of the reference matmul.")
flags.DEFINE_list(
    "ablation_settings",
    list(bench.Options.ablation_settings),
    f"Ablation-scan settings: {list(bench.ABLATION_SETTINGS)}.",
)
flags.DEFINE_list(
    "replica_settings",
    list(bench.Options.replica_settings),
    f"Seeds vmapped vs in turn: {list(bench.REPLICA_SETTINGS)}.",
)
_JSON = flags.DEFINE_string("json", None, "Write machine info, matmul rates and every row here.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    values = {}  # every field of bench.Options is a flag of the same name
    for field in dataclasses.fields(bench.Options):
        value = flags.FLAGS[field.name].value
        values[field.name] = tuple(value) if isinstance(value, list) else value
    options = bench.Options(**values).checked()
    log_devices()
    from attnjax.perf import cpu

    result = bench.run(options, compiler_options=cpu.compiler_options if CPU_TUNE.value else None)
    if _JSON.value:
        bench.write_json(_JSON.value, result)


if __name__ == "__main__":
    run(main)
