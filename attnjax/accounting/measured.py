"""Parameter counts measured on the real module, without allocating it, and reconciled with
the analytic ones of ``attnjax.accounting.params``.

``measure_params(config)`` builds the model under ``nnx.eval_shape`` (shapes and dtypes only:
counting GPT-3 175B allocates nothing) and lists every ``nnx.Param`` leaf.
``reconcile(config)`` sorts those leaves into the categories of ``ParamReport.categories()``
and raises ``ReconciliationError`` naming the first category where analytic != measured.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

from flax import nnx

from attnjax.accounting.params import count_params
from attnjax.models.config import ModelConfig

__all__ = [
    "LeafInfo",
    "ReconciliationError",
    "abstract_model",
    "format_leaf_table",
    "leaf_category",
    "measure_params",
    "measured_categories",
    "reconcile",
]


class ReconciliationError(AssertionError):
    """The analytic count of a category differs from the module's leaves."""


@dataclasses.dataclass(frozen=True)
class LeafInfo:
    """One parameter leaf: its path (``blocks/0/attention/query``; with ``scan_layers``
    ``blocks/attention/query``, shape [L, ...]), shape, dtype, size."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    size: int


def abstract_model(config: ModelConfig) -> nnx.Module:
    """``DecoderLM`` or ``Encoder`` (by ``config.architecture``) with abstract leaves only."""
    from attnjax.models.encoder import Encoder
    from attnjax.models.transformer import DecoderLM

    model_class = DecoderLM if config.architecture == "decoder" else Encoder

    def build() -> nnx.Module:
        # The RNG streams' key and count as references (``nnx.var_defaults(ref=True)``, public
        # in flax 0.12): a draw then updates them in place. As plain variables, every draw
        # compares the new count's ``sharding`` with the old one's, and on a tracer that
        # attribute's error message walks the whole trace so far, so building L blocks took
        # time quadratic in L (GPT-3 2.7B, 32 blocks: 27 s instead of 6 s; 175B ~30x slower).
        with nnx.var_defaults(ref=True):
            rngs = nnx.Rngs(0)
        return model_class(config, rngs=rngs)

    return nnx.eval_shape(build)


def measure_params(config: ModelConfig) -> list[LeafInfo]:
    """Every ``nnx.Param`` leaf of the model ``config`` describes, in path order."""
    state = nnx.state(abstract_model(config), nnx.Param)
    leaves = []
    for path, variable in nnx.to_flat_state(state):
        value = variable.get_value()
        shape = tuple(int(s) for s in value.shape)
        leaves.append(
            LeafInfo(
                path="/".join(str(part) for part in path),
                shape=shape,
                dtype=str(value.dtype),
                size=math.prod(shape),
            )
        )
    return leaves


def format_leaf_table(leaves: Sequence[LeafInfo]) -> str:
    """A per-leaf table (path, shape, dtype, size) with a total line, like
    ``clu.parameter_overview``."""
    header = ("path", "shape", "dtype", "size")
    rows = [(x.path, str(x.shape), x.dtype, f"{x.size:,}") for x in leaves]
    total = sum(x.size for x in leaves)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]

    def line(row):
        cells = [c.rjust(w) if i == 3 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "| " + " | ".join(cells) + " |"

    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    body = [rule, line(header), rule, *(line(r) for r in rows), rule]
    return "\n".join(body) + f"\nTotal: {total:,} parameters in {len(leaves)} leaves"


_CATEGORY_RULES = (
    (r"embeddings/token/embedding", "embedding/token"),
    (r"embeddings/position/embedding", "embedding/position"),
    (r"embeddings/token_type/embedding", "embedding/token_type"),
    (r"embeddings/norm/(scale|bias)", "norms"),
    (r"blocks/(\d+/)?attention/(query|key|value_down|value_up)", "attention"),
    (r"blocks/(\d+/)?attention/(query|key|value|output)_bias", "attention_biases"),
    (r"blocks/(\d+/)?(attention|mlp)_norm/(scale|bias)", "norms"),
    (r"blocks/(\d+/)?mlp/(up|down)/kernel", "mlp"),
    (r"blocks/(\d+/)?mlp/(up|down)/bias", "mlp_biases"),
    (r"final_norm/(scale|bias)", "norms"),
    (r"unembed/kernel", "unembedding"),
)


def leaf_category(path: str) -> str:
    """The ``ParamReport.categories()`` key a leaf path belongs to."""
    for pattern, category in _CATEGORY_RULES:
        if re.fullmatch(pattern, path):
            return category
    raise ReconciliationError(f"parameter leaf {path!r} belongs to no accounting category")


def measured_categories(leaves: Sequence[LeafInfo]) -> dict[str, int]:
    """Leaf sizes summed by category."""
    totals: dict[str, int] = {}
    for leaf in leaves:
        category = leaf_category(leaf.path)
        totals[category] = totals.get(category, 0) + leaf.size
    return totals


def reconcile(config: ModelConfig) -> dict[str, tuple[int, int]]:
    """Check the ``"full"`` analytic count against the module's leaves, category by category.

    Returns ``{category: (analytic, measured)}``; raises ``ReconciliationError`` naming the
    category (and both numbers) when they differ.
    """
    analytic = count_params(config, "full").categories()
    measured = measured_categories(measure_params(config))
    result = {}
    for category in sorted(set(analytic) | set(measured)):
        pair = (analytic.get(category, 0), measured.get(category, 0))
        if pair[0] != pair[1]:
            raise ReconciliationError(
                f"parameter count of {category!r}: analytic {pair[0]:,} != measured {pair[1]:,}"
            )
        result[category] = pair
    return result
