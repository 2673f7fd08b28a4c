"""The implementations of attention, one module each, and the registry that lists them.

Each module defines a :class:`~attnjax.functional.backends.base.Backend`: what it supports
(``unsupported(call) -> reason | None``) and how it runs (``run(call) -> Result``). Adding a
backend is one new module and one line in ``REGISTRY``.
"""

from attnjax.functional.backends import blocked, einsum, jax_nn, pallas_tpu, reference
from attnjax.functional.backends.base import Backend

REGISTRY: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        reference.BACKEND,  # "vmap"
        einsum.BACKEND,
        blocked.BACKEND,
        jax_nn.XLA,
        jax_nn.CUDNN,
        pallas_tpu.BACKEND,
    )
}
IMPLEMENTATIONS: tuple[str, ...] = tuple(REGISTRY)

__all__ = ["IMPLEMENTATIONS", "REGISTRY", "Backend"]
