"""Will this config fit on that TPU/GPU slice, and how fast might it run? Compiled, not run.

    python -m experiments.compile_check --topology=v5e:2x2 --config=configs/sweep.py --json
    python -m experiments.compile_check --topology=v5e:4x4 --config=configs/gpt3.py:6.7b \\
        --config.mesh.data=1 --config.mesh.fsdp=16 --seq_len=1024
    python -m experiments.compile_check --topology=h200:1x1x8 --config=configs/train.py

Topologies: ``v4:2x2x1``, ``v5e:2x2``, ``v5e:4x4``, ``v5p:2x2x1``, ``v6e:2x2``, ...
(libtpu's names), ``h100:1x1x8``, ``h200:1x1x8`` (N GPUs of one host), ``cpu:N`` (this
process's CPU devices). Configs: a run, a sweep (every point) or a counting config
(``configs/gpt3.py:<size>``: one sequence per batch shard unless ``--batch_size``), with
``--config.mesh.{data,fsdp,model}`` and the batch and sequence flags. See
``attnjax.aot.plan`` for what each column means and what the estimates leave out.

TPU topologies need ``uv sync --locked --group tpu``, GPUs ``--group cuda``. libtpu may query
a cloud metadata server, so the launcher re-runs itself without network (``unshare -n`` with
``TPU_SKIP_MDS_QUERY=1 TPU_WORKER_HOSTNAMES=localhost JAX_PLATFORMS=cpu``); ``--noisolate``
skips that (on a machine where that is fine).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

from absl import flags
from ml_collections import config_flags

from experiments.common import CPU_TUNE, run

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/sweep.py", "Run, sweep or counting config, e.g. configs/gpt3.py:6.7b.",
    lock_config=True,
)  # fmt: skip
_TOPOLOGY = flags.DEFINE_string("topology", None, "e.g. v5e:2x2, v5p:2x2x1, h200:1x1x8, cpu:1.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Global batch (default: the config's).")
_SEQ_LEN = flags.DEFINE_integer("seq_len", None, "Sequence length (default: the config's).")
_JSON = flags.DEFINE_bool("json", False, "Print the rows as one JSON list instead of a table.")
_ISOLATE = flags.DEFINE_bool(
    "isolate", True, "Re-run without network (unshare -n) before loading libtpu or CUDA."
)

ISOLATED_ENV = {
    "TPU_SKIP_MDS_QUERY": "1",
    "TPU_WORKER_HOSTNAMES": "localhost",
    "JAX_PLATFORMS": "cpu",
    "ATTNJAX_ISOLATED": "1",
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",  # compile-only: several checks may run at once
}
GROUPS = {"tpu": ("tpu", "libtpu"), "cuda": ("cuda", "jax-cuda12-plugin")}


def _require_group(platform: str) -> None:
    group, package = GROUPS[platform]
    try:
        importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        raise ValueError(
            f"--topology={_TOPOLOGY.value} needs {package}: install it with "
            f"`uv sync --locked --group {group}` (then `uv run --no-sync ...` keeps it)"
        ) from None


def isolated_command(argv: list[str]) -> list[str]:
    """This launcher's command line, run without network and with libtpu told to stay local."""
    env = [f"{k}={v}" for k, v in ISOLATED_ENV.items()]
    return ["unshare", "-n", "--", "env", *env, sys.executable, "-m", __spec__.name, *argv[1:]]


def _rerun_isolated(argv: list[str]) -> None:
    command = isolated_command(argv)
    probe = subprocess.run(["unshare", "-n", "--", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise ValueError(
            f"`unshare -n` is refused here ({probe.stderr.strip()[-200:]}); run as "
            f"`{' '.join(command)}` where permitted, or pass --noisolate on a machine whose "
            "network libtpu may reach"
        )
    sys.stdout.flush()
    sys.exit(subprocess.run(command).returncode)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {argv[1:]}")
    if not _TOPOLOGY.value:
        raise ValueError("--topology is required (e.g. --topology=v5e:2x2)")
    from attnjax.aot import plan

    target = plan.parse_topology(_TOPOLOGY.value)
    if target.platform == "cpu" and not os.environ.get("JAX_PLATFORMS"):
        import jax  # never let JAX probe an installed libtpu outside unshare -n

        jax.config.update("jax_platforms", "cpu")
    if target.platform in GROUPS:
        _require_group(target.platform)
        if _ISOLATE.value and not os.environ.get("ATTNJAX_ISOLATED"):
            _rerun_isolated(sys.argv)
    from attnjax.perf import cpu

    echo = None if _JSON.value else lambda row: print(f"compiled {row['config']}", flush=True)
    rows = plan.compile_check(
        _CONFIG.value,
        _TOPOLOGY.value,
        batch_size=_BATCH.value,
        seq_len=_SEQ_LEN.value,
        compiler_options=cpu.compiler_options if CPU_TUNE.value else None,
        echo=echo,
    )
    if _JSON.value:
        print(json.dumps(plan.json_ready(rows), indent=1))
    else:
        print(plan.format_rows(rows))


if __name__ == "__main__":
    run(main)
