"""attnjax.aot's compile-and-inspect helpers, on a CPU mesh of 4 simulated devices (no optional
group needed): all-gathers counted by operand shape, per-device output bytes, kernel markers;
importing attnjax.aot loads neither libtpu nor a GPU plugin."""

import json
import os
import subprocess
import sys

import pytest

from attnjax import aot

_SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from attnjax import aot
import attnjax.aot.steps

mesh = aot.mesh(jax.devices(), data=4)
x = aot.sharded_struct((8, 6), jnp.float32, mesh, ("data", None))
gathered = aot.compile(lambda x: x * 2, x, out_shardings=NamedSharding(mesh, P()))
kept = aot.compile(lambda x: x * 2, x)
text = gathered.as_text()
print(json.dumps(dict(
    gathers=aot.all_gathers(text),
    gathers_of_shard=aot.all_gathers(text, [(2, 6)]),
    gathers_of_other=aot.all_gathers(text, [(8, 6), (2, 5)]),
    kept_gathers=aot.all_gathers(kept.as_text()),
    gathered_bytes=aot.output_bytes(gathered),
    kept_bytes=aot.output_bytes(kept),
    kernels=aot.kernels(text),
    libtpu_loaded=any(name.startswith("libtpu") for name in sys.modules),
)))
"""


def test_helpers_read_a_compiled_program():
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
    }
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["gathers"] == 1 and got["gathers_of_shard"] == 1 and got["gathers_of_other"] == 0
    assert got["kept_gathers"] == 0
    assert got["gathered_bytes"] == 8 * 6 * 4 and got["kept_bytes"] == 2 * 6 * 4
    assert got["kernels"] == {"pallas_tpu": False, "cudnn": False}
    assert not got["libtpu_loaded"]


def test_bad_names_raise_value_errors_naming_the_argument():
    with pytest.raises(ValueError, match="name='v5litepod-16' is not a TPU topology"):
        aot.tpu_topology("v5litepod-16")
    with pytest.raises(ValueError, match="target='a100' is neither one of"):
        aot.gpu_target_config("a100")
    with pytest.raises(ValueError, match="num_devices=0 must be a positive int"):
        aot.gpu_topology("h200", 0)
    assert "device_memory_size: 151397597184" in aot.gpu_target_config("h200")
    assert "memory_bandwidth: 3352320000000" in aot.gpu_target_config("h100")
