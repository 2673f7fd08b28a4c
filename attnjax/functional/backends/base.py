"""What a backend is: a named way to run a :class:`~attnjax.functional.call.Call`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from attnjax.functional.call import Call, Result

__all__ = ["MAX_GRID_BYTES", "Backend", "grid_too_big"]

# The largest [B, N, T, S] float32 grid a grid-building backend accepts (8 GiB); past it the
# call is refused with the size, instead of failing inside XLA with RESOURCE_EXHAUSTED.
MAX_GRID_BYTES = 8 * 2**30


def _supports_all(call: Call) -> str | None:
    return None


@dataclasses.dataclass(frozen=True)
class Backend:
    """One implementation of attention.

    ``run(call) -> Result``; ``unsupported(call)`` gives the reason it cannot run a call (the
    text of the ``ValueError``) or None; ``not_automatic(call)`` a reason
    ``implementation=None`` passes it over for a call it can run when asked (or None).
    ``gives_pattern``, ``gives_lse`` and ``supports_dropout`` say what it can return or do;
    ``per_shard`` that XLA cannot partition it, so under a mesh it runs per shard through
    ``jax.shard_map``; ``platforms`` the lowering platforms it runs on (None: every one);
    ``instead`` what to suggest when it cannot run a call.
    """

    name: str
    run: Callable[[Call], Result]
    unsupported: Callable[[Call], str | None] = _supports_all
    not_automatic: Callable[[Call], str | None] = _supports_all
    gives_pattern: bool = False
    gives_lse: bool = False
    supports_dropout: bool = False
    per_shard: bool = False
    platforms: tuple[str, ...] | None = None
    instead: str = "'blocked' or 'einsum'"

    def why_unsupported(self, call: Call) -> str | None:
        """Why this backend cannot run ``call`` (None when it can)."""
        if call.return_pattern and not self.gives_pattern:
            return f"return_pattern=True ({self.name!r} never builds the pattern)"
        if call.dropout_rate > 0 and not self.supports_dropout:
            return "dropout_rate > 0"
        if call.return_lse and not self.gives_lse:
            return f"return_lse or return_residual ({self.name!r} gives no log-sum-exp)"
        return self.unsupported(call)


def grid_too_big(call: Call) -> str | None:
    """For backends that build the ``[B, N, T, S]`` float32 grid: refuse one too big to hold."""
    batch, heads, q_len, k_len = call.grid_shape
    size = 4 * batch * heads * q_len * k_len
    if size <= MAX_GRID_BYTES:
        return None
    return (
        f"its [B, N, T, S] = {list(call.grid_shape)} float32 grid takes {size / 2**30:.1f} GiB "
        f"(limit {MAX_GRID_BYTES / 2**30:.0f} GiB); implementation='blocked' never builds it"
    )
