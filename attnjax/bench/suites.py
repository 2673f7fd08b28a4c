"""One benchmark run: options checked, machine described, suites run, one result dict."""

from __future__ import annotations

import dataclasses
import importlib
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp

from attnjax.bench import attention, interventions, peers, replicas, report, timing, train
from attnjax.functional.backends import REGISTRY

__all__ = ["SUITES", "Options", "machine_info", "run"]

SUITES = ("attention", "train", "interventions", "replicas", "all")
CAUSAL = {"both": (True, False), "true": (True,), "false": (False,)}


@dataclasses.dataclass(frozen=True)
class Options:
    """What to run (the launcher's flags, same names and defaults).

    ``implementations=None``: every registered implementation that runs on this platform, then
    ``auto``. ``causal``: ``"both"``, ``"true"`` or ``"false"``. ``max_memory_gib=None``: 80%
    of the memory available. Times are in seconds.
    """

    suite: str = "all"
    cases: tuple[str, ...] = attention.DEFAULT_CASES
    modes: tuple[str, ...] = attention.MODES
    causal: str = "both"
    implementations: tuple[str, ...] | None = None
    peers: tuple[str, ...] = attention.PEERS
    dtype: str = "float32"
    repeats: int = 5
    budget_s: float = 2.0
    max_memory_gib: float | None = None
    train_settings: tuple[str, ...] = train.DEFAULT_TRAIN_SETTINGS
    train_repeats: int = 3
    matmul_size: int = 2048
    ablation_settings: tuple[str, ...] = ("l4_n8_d128_t64_b8",)
    replica_settings: tuple[str, ...] = ("sweep_l2_h4_s3",)

    def checked(self) -> Options:
        """These options with ``implementations`` filled in; ``ValueError`` naming the flag
        of the first unknown or out-of-range value."""
        implementations = self.implementations or attention.default_implementations()
        _check("implementations", implementations, (*REGISTRY, attention.AUTO))
        _check("suite", [self.suite], SUITES)
        _check("cases", self.cases, attention.CASES)
        _check("modes", self.modes, attention.MODES)
        _check("causal", [self.causal], CAUSAL)
        _check("peers", self.peers, attention.PEERS)
        _check("dtype", [self.dtype], ("float32", "bfloat16"))
        _check("train_settings", self.train_settings, train.TRAIN_SETTINGS)
        _check("ablation_settings", self.ablation_settings, interventions.ABLATION_SETTINGS)
        _check("replica_settings", self.replica_settings, replicas.REPLICA_SETTINGS)
        if self.repeats < 1 or self.train_repeats < 1:
            raise ValueError("--repeats and --train_repeats must be at least 1")
        if self.matmul_size < 1:
            raise ValueError(f"--matmul_size={self.matmul_size} must be at least 1")
        return dataclasses.replace(self, implementations=tuple(implementations))


def _check(flag: str, values, choices) -> None:
    for value in values:
        if value not in choices:
            raise ValueError(f"--{flag}: {value!r} is unknown; choose from {list(choices)}")


def machine_info() -> dict:
    """Platform, CPU count, Python, JAX (backend, devices), flax and (if present) torch."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "flax": importlib.import_module("flax").__version__,
    }
    if peers.torch_available():
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    return info


def run(options: Options = Options(), *, compiler_options=None) -> dict:
    """Run the suites, printing each table as it completes.

    ``compiler_options``: ``platform -> XLA options`` for the timed train step, as training
    takes it (``experiments.benchmark`` passes ``attnjax.perf.cpu.compiler_options`` unless
    ``--cpu_tune=false``, so the step timed is the step ``experiments.train`` runs).

    Returns:
      ``{"machine": machine_info(), "matmul_size": int, "matmul_gflops": {"jax": GFLOP/s,
      "torch": ...}, "attention": [row, ...], "train": [row, ...], "wall_s": seconds}``; rows
      as :func:`attnjax.bench.attention.attention_rows` and
      :func:`attnjax.bench.train.train_rows` give them.
    """
    options = options.checked()
    start = time.perf_counter()
    info = machine_info()
    with_torch = peers.torch_skip_reason() is None
    matmul = {"jax": timing.matmul_gflops(options.matmul_size)}
    if with_torch:
        matmul["torch"] = peers.torch_matmul_gflops(options.matmul_size)
    report.print_header(info, matmul, options.matmul_size)
    result = {"machine": info, "matmul_size": options.matmul_size, "matmul_gflops": matmul}
    result.update(attention=[], train=[], interventions=[], replicas=[])
    if options.suite in ("attention", "all"):
        print(report.RATIO_NOTE)
        result["attention"] = attention.attention_rows(
            options.cases, options.modes, CAUSAL[options.causal], options.implementations,
            options.peers, jnp.dtype(options.dtype), options.repeats, options.budget_s,
            matmul["jax"], options.max_memory_gib,
        )  # fmt: skip
    if options.suite in ("train", "all"):
        print(f"\n{train.TRAIN_NOTES}")
        result["train"] = train.train_rows(
            options.train_settings, options.train_repeats, with_torch, matmul["jax"],
            compiler_options=compiler_options,
        )  # fmt: skip
    if options.suite in ("interventions", "all"):
        print(f"\n{interventions.__doc__}")
        result["interventions"] = interventions.ablation_rows(
            options.ablation_settings, options.train_repeats
        )
    if options.suite in ("replicas", "all"):
        print(f"\n{replicas.__doc__}")
        result["replicas"] = replicas.replica_rows(
            options.replica_settings, options.train_repeats, compiler_options=compiler_options
        )
    result["wall_s"] = time.perf_counter() - start
    print(f"\nwall time {result['wall_s']:.0f} s")
    return result
