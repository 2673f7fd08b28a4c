"""Where a run is planned: the chips ``compile_check`` knows (memory, bandwidth, peak) and the
``--topology`` names it takes."""

from __future__ import annotations

import dataclasses
import math
import re

import jax

__all__ = ["CHIPS", "Chip", "Topology", "parse_topology"]

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One device's figures: memory (bytes), HBM bandwidth (bytes/s), dense bf16 peak (FLOP/s)."""

    memory: int
    bandwidth: float
    peak_flops: float
    platform: str


# Per chip (TPU) or per GPU, dense bf16 (no sparsity).
CHIPS: dict[str, Chip] = {
    # https://cloud.google.com/tpu/docs/v4: 32 GiB HBM2, 1,200 GB/s, 275 TFLOP/s bf16.
    "v4": Chip(32 * GiB, 1200e9, 275e12, "tpu"),
    # https://cloud.google.com/tpu/docs/v5e: 16 GiB HBM2, 819 GB/s, 197 TFLOP/s bf16.
    "v5e": Chip(16 * GiB, 819e9, 197e12, "tpu"),
    # https://cloud.google.com/tpu/docs/v5p: 95 GiB HBM2e, 2,765 GB/s, 459 TFLOP/s bf16.
    "v5p": Chip(95 * GiB, 2765e9, 459e12, "tpu"),
    # https://cloud.google.com/tpu/docs/v6e: 32 GiB HBM, 1,640 GB/s, 918 TFLOP/s bf16.
    "v6e": Chip(32 * GiB, 1640e9, 918e12, "tpu"),
    # NVIDIA H100 SXM data sheet: 80 GB HBM3, 3.35 TB/s, 989 TFLOP/s bf16 dense (1,979 sparse).
    "h100": Chip(80 * 10**9, 3.35e12, 989e12, "cuda"),
    # NVIDIA H200 SXM data sheet: 141 GB HBM3e, 4.8 TB/s, 989 TFLOP/s bf16 dense (as H100).
    "h200": Chip(141 * 10**9, 4.8e12, 989e12, "cuda"),
}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A parsed ``--topology``: ``"v5e:2x2"``, ``"v5p:2x2x1"``, ``"h200:1x1x8"``, ``"cpu:8"``."""

    name: str
    chip: str
    platform: str
    num_devices: int

    def devices(self):
        """The topology's (compile-only) devices; loads libtpu or the CUDA plugin."""
        from attnjax import aot

        if self.platform == "tpu":
            return list(aot.tpu_topology(self.name).devices)
        if self.platform == "cuda":
            return list(aot.gpu_topology(self.chip, self.num_devices).devices)
        available = jax.devices("cpu")
        if self.num_devices > len(available):
            raise ValueError(
                f"topology={self.name!r} asks for {self.num_devices} CPU devices but this "
                f"process has {len(available)} (XLA_FLAGS=--xla_force_host_platform_device_count)"
            )
        return available[: self.num_devices]


def parse_topology(name: str) -> Topology:
    """``"<chip>:<AxBxC>"`` with a chip of ``CHIPS`` (TPU slices as libtpu names them, GPUs
    as ``1x1xN`` for N GPUs of one host), or ``"cpu:N"`` (this process's CPU devices)."""
    match = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)*)", str(name).strip().lower())
    if not match:
        raise ValueError(f"topology={name!r} is not like 'v5e:2x2', 'h200:1x1x8' or 'cpu:8'")
    chip, shape = match.groups()
    count = math.prod(int(x) for x in shape.split("x"))
    if chip == "cpu":
        return Topology(name, chip, "cpu", count)
    if chip not in CHIPS:
        raise ValueError(f"topology={name!r}: unknown chip {chip!r}; choose one of {list(CHIPS)}")
    if CHIPS[chip].platform == "tpu" and "x" not in shape:
        raise ValueError(f"topology={name!r}: a TPU slice is named like '{chip}:2x2'")
    if CHIPS[chip].platform == "cuda" and not re.fullmatch(r"1x1x\d+", shape):
        raise ValueError(f"topology={name!r}: GPUs of one host are named like '{chip}:1x1x8'")
    return Topology(name, chip, CHIPS[chip].platform, count)
