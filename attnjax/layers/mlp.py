"""The MLP of a transformer block and the normalization layers."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Float

from attnjax.functional._types import ArrayT

__all__ = ["ACTIVATIONS", "MLP", "NORMS", "gelu", "make_norm"]


def gelu(x: Float[ArrayT, "*shape"]) -> Float[ArrayT, "*shape"]:
    """Exact GELU, ``x · Φ(x) = x/2 · (1 + erf(x/√2))``: ``jax.nn.gelu(approximate=False)``
    written as PyTorch's ``nn.GELU()`` writes it. The two agree to float32 rounding (tested).

    Why not ``jax.nn.gelu`` itself: its ``erfc`` form made XLA:CPU's whole train step slower at
    nanoGPT's CPU recipe (4 layers x 128, T=64, batch 12): 1.06x the wall time and 1.05x the
    CPU time (interleaved in one process, 30 rounds, with ``attnjax.perf.cpu``'s compiler
    options); at 6 x 384, T=256 it was even (1.01x wall, 0.98x CPU, 10 rounds). Earlier, under
    XLA's default YNNPACK fusions, the ``erfc`` form cost ~1.35x. It also adds ~4% to XLA's
    cost-analysis FLOPs (README, accounting)."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


ACTIVATIONS = {
    "gelu": gelu,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}
NORMS = ("layernorm", "rmsnorm")


class MLP(nnx.Module):
    """``down(activation(up(x)))``: D → F → D, applied to every position independently."""

    def __init__(
        self,
        model_dim: int,
        mlp_dim: int,
        *,
        activation: str = "gelu",
        use_bias: bool = True,
        dtype=None,
        param_dtype=jnp.float32,
        kernel_init: nnx.Initializer = nnx.initializers.normal(0.02),
        rngs: nnx.Rngs,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation={activation!r} is unknown; choose one of {list(ACTIVATIONS)}"
            )
        self.activation = activation
        linear = dict(
            use_bias=use_bias,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=kernel_init,
            rngs=rngs,
        )
        self.up = nnx.Linear(model_dim, mlp_dim, **linear)
        self.down = nnx.Linear(mlp_dim, model_dim, **linear)

    def __call__(self, x: Float[ArrayT, "*B D"], record=None) -> Float[ArrayT, "*B D"]:
        # Positions as rows of one matrix: the weight gradients are then plain [M, D]ᵀ·[M, F]
        # products, which XLA:CPU runs without transposed copies. Without this reshape a CPU
        # train step took 1.06x the wall / 1.08x the CPU time at 6 layers x 384, T=256, and
        # 1.02x / 1.05x at 4 x 128, T=64 (interleaved A/B in one process; see gelu above).
        rows = x.reshape(-1, x.shape[-1])
        hidden = ACTIVATIONS[self.activation](self.up(rows))
        if record is not None:  # a layers.probe.Recorder
            record.put("mlp_hidden", hidden.reshape(*x.shape[:-1], hidden.shape[-1]))
        out = self.down(hidden)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def make_norm(
    kind: str,
    dim: int,
    *,
    eps: float = 1e-5,
    use_bias: bool = True,
    dtype=None,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """``"layernorm"`` (scale, optional bias) or ``"rmsnorm"`` (scale only), over the last axis."""
    if kind == "layernorm":
        return nnx.LayerNorm(
            dim, epsilon=eps, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
    if kind == "rmsnorm":
        return nnx.RMSNorm(dim, epsilon=eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    raise ValueError(f"norm={kind!r} is unknown; choose one of {NORMS}")
