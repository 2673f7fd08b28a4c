"""``"vmap"``: the reference, the single-head function lifted with ``jax.vmap``."""

from attnjax.functional.attention import vmap_attention
from attnjax.functional.backends.base import Backend, grid_too_big

BACKEND = Backend(
    name="vmap",
    run=vmap_attention,
    unsupported=grid_too_big,
    gives_pattern=True,
    gives_lse=True,
    supports_dropout=True,
    instead="'blocked'",
)
