"""Interactive attention views as self-contained HTML: no CDN, no build step, no network.

Four views, each an ``HtmlView`` that shows itself in Jupyter/Colab (``_repr_html_``: an
``<iframe srcdoc>``, so several views never clash) and writes a standalone page
(``.save(path)``, atomic):

- ``model_view``: an L × N grid of thumbnails, one per layer and head; click one to enlarge it
  with token labels, the value under the pointer, zoom (wheel, buttons) and pan (drag);
- ``pattern_view``: that enlarged heatmap alone for one head, with layer/head pickers;
- ``head_view``: tokens on both sides, lines weighted by attention for a layer and chosen heads;
  hover a token to focus it, click to lock the focus, click it again to unlock;
- ``word_view``: one word across sentences (``analysis.word_in_context``): per layer, where it
  looks (mean over heads or one head), its top tokens and the cosine similarity of its vectors.

**What the page holds** (``PatternRows``): attention quantised to 8 bits of its square root,
``round(√p · 255)`` (√p within 1/510: p within 1/255 near 1 and far finer for small weights,
the smallest non-zero being 1.5e-5), base64 in one JSON block; colours follow √p too. Up to
``DENSE_MAX_T`` tokens every row is kept (``L·N·T²`` bytes, ×4/3 for base64: 6 layers ×
12 heads × T = 128 → 1.6 MB). Longer rows keep their ``top_k`` largest entries (default 16)
with uint16 key indices, 3·k bytes per row: 6 × 12 × T = 512 → 2.4 MB; entries not kept
read as 0, and the page says what share of each row's attention was kept. Long sequences come
from ``PatternRows.from_lse``: every tile of ``block`` query rows is recomputed from the
blocked path's log-sum-exp (``analysis.pattern_tile``) and reduced to its top-k, so no
``[T, T]`` array of a whole head is ever built (T = 4096 works).
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import html as html_lib
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from attnjax.analysis.patterns import AttentionPatterns
from attnjax.analysis.tiles import pattern_tile
from attnjax.functional import Masking
from attnjax.functional._checks import as_int
from attnjax.functional._types import ArrayT

__all__ = [
    "DENSE_MAX_T",
    "HtmlView",
    "PatternRows",
    "head_view",
    "model_view",
    "pattern_view",
    "save_word_in_context_views",
    "word_view",
]

DENSE_MAX_T = 128
DEFAULT_TOP_K = 16
_SCRIPT = pathlib.Path(__file__).with_name("html.js")


@dataclasses.dataclass(frozen=True)
class PatternRows:
    """The compact attention of one example: every layer and head, row by row.

    ``values`` [L, N, T, k] uint8 (``round(√p · 255)``), ``indices`` [L, N, T, k] uint16 key
    positions (``None`` when dense: k = T and ``values[..., s]`` is key s), ``tokens`` the T
    token strings, ``kept`` the mean share of a row's attention the kept entries hold.
    """

    tokens: tuple[str, ...]
    values: np.ndarray
    indices: np.ndarray | None
    kept: float = 1.0

    @property
    def shape(self) -> tuple[int, int, int]:
        """(L, N, T)."""
        return self.values.shape[:3]

    @classmethod
    def from_patterns(
        cls,
        patterns: Float[ArrayT, "L N T T"],
        tokens: Sequence[str] | None = None,
        top_k: int | None = None,
    ) -> PatternRows:
        """From full patterns [L, N, T, T] of one example. ``top_k=None`` keeps every entry
        up to ``DENSE_MAX_T`` tokens and the ``DEFAULT_TOP_K`` largest of each row beyond."""
        patterns = np.asarray(patterns, np.float32)
        if patterns.ndim != 4 or patterns.shape[2] != patterns.shape[3]:
            raise ValueError(f"patterns must have shape [L, N, T, T], got {patterns.shape}")
        length = patterns.shape[-1]
        tokens = _tokens(tokens, length)
        k = _top_k(top_k, length)
        if k is None:
            return cls(tokens, _quantise(patterns), None)
        indices = np.argpartition(-patterns, k - 1, axis=-1)[..., :k]
        values = np.take_along_axis(patterns, indices, axis=-1)
        order = np.argsort(-values, axis=-1, kind="stable")  # largest first
        indices = np.take_along_axis(indices, order, axis=-1)
        values = np.take_along_axis(values, order, axis=-1)
        return cls(tokens, _quantise(values), indices.astype(np.uint16), _kept(values))

    @classmethod
    def from_lse(
        cls,
        queries: Sequence[Float[ArrayT, "B T N H"]],
        keys: Sequence[Float[ArrayT, "B T K H"]],
        lses: Sequence[Float[ArrayT, "B N T"]],
        tokens: Sequence[str] | None = None,
        *,
        batch: int = 0,
        top_k: int = DEFAULT_TOP_K,
        block: int = 256,
        scale: float | None = None,
        masking: Any = None,
    ) -> PatternRows:
        """Self-attention of example ``batch`` from each layer's ``query``, ``key`` and the
        ``lse`` that ``dot_product_attention(..., implementation="blocked", return_lse=True)``
        returned (one entry per layer; ``scale``/``masking`` as in that call). Tiles of
        ``block`` query rows × all keys are recomputed (``analysis.pattern_tile``) and cut to
        their ``top_k`` largest entries, so memory stays at one ``[block, T]`` tile."""
        if not len(queries) == len(keys) == len(lses) > 0:
            raise ValueError(
                f"queries, keys and lses need one entry per layer, got {len(queries)}, "
                f"{len(keys)}, {len(lses)}"
            )
        length = queries[0].shape[1]
        if keys[0].shape[1] != length:
            raise ValueError(f"keys must have T={length} positions, got {keys[0].shape[1]}")
        top_k = as_int("top_k", top_k, minimum=1)
        block = as_int("block", block, minimum=1)
        k = min(top_k, length)
        _check_length(length)
        tokens = _tokens(tokens, length)
        masking = Masking() if masking is None else masking
        values, indices = [], []
        for q, key, lse in zip(queries, keys, lses):
            top, where = _layer_top_k(
                q, key, lse, masking, batch=batch, top_k=k, block=block, scale=scale
            )
            values.append(np.asarray(top))
            indices.append(np.asarray(where, np.uint16))
        values, indices = np.stack(values), np.stack(indices)
        return cls(tokens, _quantise(values), indices, _kept(values))

    def value(self, layer: int, head: int, query: int, key: int) -> float:
        """The stored (quantised) attention of ``query`` on ``key``; 0 where not kept."""
        row = self.values[layer, head, query]
        if self.indices is None:
            return (float(row[key]) / 255) ** 2
        hit = np.flatnonzero(self.indices[layer, head, query] == key)
        return (float(row[hit[0]]) / 255) ** 2 if hit.size else 0.0

    def payload(self) -> dict:
        """The JSON the page reads (arrays as base64 of little-endian bytes)."""
        layers, heads, length = self.shape
        data = {
            "tokens": list(self.tokens),
            "L": layers,
            "N": heads,
            "T": length,
            "k": 0 if self.indices is None else int(self.values.shape[-1]),
            "kept": round(self.kept, 4),
            "values": _b64(self.values),
        }
        if self.indices is not None:
            data["indices"] = _b64(self.indices.astype("<u2"))
        return data


@functools.partial(jax.jit, static_argnames=("batch", "top_k", "block", "scale"))
def _layer_top_k(query, key, lse, masking, *, batch, top_k, block, scale):
    """[N, T, k] largest weights and their keys, one ``pattern_tile`` of ``block`` rows at a
    time (one compiled program per layer shape; each tile is reduced before the next)."""
    num_heads, length = query.shape[2], query.shape[1]
    values, indices = [], []
    for head in range(num_heads):
        for start in range(0, length, block):
            rows = slice(start, min(start + block, length))
            tile = pattern_tile(
                query, key, lse, batch=batch, head=head, queries=rows, scale=scale,
                masking=masking,
            )  # fmt: skip
            top, where = jax.lax.top_k(tile, top_k)
            values.append(top)
            indices.append(where)
    shape = (num_heads, length, top_k)
    return jnp.concatenate(values).reshape(shape), jnp.concatenate(indices).reshape(shape)


def _tokens(tokens: Sequence[str] | None, length: int) -> tuple[str, ...]:
    tokens = tuple(str(i) for i in range(length)) if tokens is None else tuple(map(str, tokens))
    if len(tokens) != length:
        raise ValueError(f"tokens has {len(tokens)} strings, the patterns have T={length}")
    return tokens


def _top_k(top_k: int | None, length: int) -> int | None:
    _check_length(length)
    if top_k is None:
        return None if length <= DENSE_MAX_T else DEFAULT_TOP_K
    top_k = as_int("top_k", top_k, minimum=1)
    return None if top_k >= length else top_k


def _check_length(length: int) -> None:
    if length > 65535:
        raise ValueError(f"T={length} exceeds the 65535 key positions a page can index")


def _quantise(values: np.ndarray) -> np.ndarray:
    """8 bits of √p: fine steps for small weights (the smallest non-zero is 1/255² ≈ 1.5e-5)."""
    root = np.sqrt(np.clip(np.asarray(values, np.float32), 0, 1))
    return np.rint(root * 255).astype(np.uint8)


def _kept(values: np.ndarray) -> float:
    return float(np.asarray(values, np.float64).sum(axis=-1).mean())


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


class HtmlView:
    """A self-contained page: ``html`` (the text), ``nbytes``, ``save(path)`` and, in a
    notebook, itself (an iframe sized ``height`` px)."""

    def __init__(self, title: str, data: dict, height: int = 640):
        self.title = title
        self.height = height
        payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
        self.html = _PAGE.format(
            title=html_lib.escape(title), css=_CSS, data=payload, script=_SCRIPT.read_text()
        )

    @property
    def nbytes(self) -> int:
        """Size of the page in bytes (UTF-8)."""
        return len(self.html.encode("utf-8"))

    def save(self, path: str | pathlib.Path) -> pathlib.Path:
        """Write the page to ``path`` atomically (parent folders created); returns the path."""
        from attnjax.training.files import atomic_write_text  # heavy package: only when saving

        path = pathlib.Path(path)
        if path.suffix.lower() not in (".html", ".htm"):
            raise ValueError(f"path must end in .html, got {str(path)!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, self.html)
        return path

    def _repr_html_(self) -> str:
        return (
            f'<iframe srcdoc="{html_lib.escape(self.html, quote=True)}" '
            f'style="width:100%;height:{self.height}px;border:0" '
            f'title="{html_lib.escape(self.title)}"></iframe>'
        )

    def __repr__(self) -> str:
        return f"HtmlView({self.title!r}, {self.nbytes} bytes)"


def _rows(
    patterns: AttentionPatterns | PatternRows | Any,
    example: int,
    tokens: Sequence[str] | None,
    top_k: int | None,
) -> PatternRows:
    if isinstance(patterns, PatternRows):
        return patterns
    if isinstance(patterns, AttentionPatterns):
        example = as_int("example", example, minimum=0)
        if example >= len(patterns.tokens):
            raise ValueError(f"example={example} out of range for B={len(patterns.tokens)}")
        return PatternRows.from_patterns(patterns.example(example), patterns.tokens[example], top_k)
    return PatternRows.from_patterns(patterns, tokens, top_k)


def _choice(name: str, value: int, count: int) -> int:
    value = as_int(name, value, minimum=0)
    if value >= count:
        raise ValueError(f"{name}={value} out of range (0..{count - 1})")
    return value


def model_view(
    patterns: AttentionPatterns | PatternRows | Float[ArrayT, "L N T T"],
    example: int = 0,
    *,
    tokens: Sequence[str] | None = None,
    top_k: int | None = None,
    title: str = "Attention: every layer and head",
) -> HtmlView:
    """An L × N grid of every head's pattern; click a thumbnail to enlarge it.

    ``patterns``: an ``AttentionPatterns`` (``example`` picks the sentence), a ``PatternRows``
    (e.g. from ``PatternRows.from_lse`` for long sequences) or an array [L, N, T, T] with its
    ``tokens``. ``top_k``: see ``PatternRows.from_patterns``.
    """
    rows = _rows(patterns, example, tokens, top_k)
    return HtmlView(title, {"view": "model", **rows.payload()}, height=760)


def pattern_view(
    patterns: AttentionPatterns | PatternRows | Float[ArrayT, "L N T T"],
    example: int = 0,
    *,
    layer: int = 0,
    head: int = 0,
    tokens: Sequence[str] | None = None,
    top_k: int | None = None,
    title: str = "Attention pattern",
) -> HtmlView:
    """One head's pattern as a heatmap with token labels, zoom and pan (see ``model_view``)."""
    rows = _rows(patterns, example, tokens, top_k)
    layers, heads, _ = rows.shape
    data = {
        "view": "pattern",
        "layer": _choice("layer", layer, layers),
        "head": _choice("head", head, heads),
        **rows.payload(),
    }
    return HtmlView(title, data, height=680)


def head_view(
    patterns: AttentionPatterns | PatternRows | Float[ArrayT, "L N T T"],
    example: int = 0,
    *,
    layer: int = 0,
    heads: Sequence[int] | None = None,
    tokens: Sequence[str] | None = None,
    top_k: int | None = None,
    title: str = "Attention: head view",
) -> HtmlView:
    """Tokens on both sides (queries left, keys right), a line per attention weight of the
    chosen ``heads`` (default all) of ``layer``, opacity = weight, one colour per head."""
    rows = _rows(patterns, example, tokens, top_k)
    layers, num_heads, length = rows.shape
    heads = list(range(num_heads)) if heads is None else [int(h) for h in heads]
    for h in heads:
        _choice("heads", h, num_heads)
    data = {"view": "head", "layer": _choice("layer", layer, layers), "heads": heads}
    return HtmlView(title, {**data, **rows.payload()}, height=max(300, 22 * length + 140))


def word_view(result: Any, title: str | None = None) -> HtmlView:
    """One word across sentences from ``analysis.word_in_context``: per layer (slider) and
    head (or the mean), the attention from the word onto each sentence's tokens, its top
    tokens, and the cosine similarity of its vectors between sentences."""
    for name in ("word", "sentences", "focus", "similarity"):
        if not hasattr(result, name):
            raise ValueError(f"result must be a WordInContext, it has no {name!r}")
    focus = [
        {
            "tokens": list(f.tokens),
            "positions": list(f.positions),
            "rows": np.round(np.asarray(f.rows, np.float64), 4).tolist(),  # [L, N, n]
        }
        for f in result.focus
    ]
    similarity = np.round(np.asarray(result.similarity.similarity, np.float64), 4).tolist()
    data = {
        "view": "word",
        "word": result.word,
        "sentences": list(result.sentences),
        "focus": focus,
        "similarity": similarity,  # [L+1, S, S]: embeddings, then each layer
    }
    title = title or f"{result.word!r} in context"
    return HtmlView(title, data, height=200 + 90 * len(result.sentences) + 60 * len(focus))


def save_word_in_context_views(result: Any, folder: str | pathlib.Path) -> list[pathlib.Path]:
    """Pages for an ``analysis.word_in_context`` result in ``folder``: per sentence ``i``
    ``s{i}_model_view.html`` and ``s{i}_head_view.html``, then ``{word}_in_context.html``."""
    folder = pathlib.Path(folder)
    pages = []
    for i, sentence in enumerate(result.sentences):
        model = model_view(result.patterns, i, title=f"Every layer and head: {sentence!r}")
        heads = head_view(result.patterns, i, title=f"Head view: {sentence!r}")
        pages.append(model.save(folder / f"s{i}_model_view.html"))
        pages.append(heads.save(folder / f"s{i}_head_view.html"))
    name = "".join(c if c.isalnum() else "_" for c in result.word)
    pages.append(word_view(result).save(folder / f"{name}_in_context.html"))
    return pages


_CSS = """
body{font:13px/1.35 system-ui,sans-serif;margin:12px;color:#222;background:#fff}
h1{font-size:16px;margin:0 0 8px}.note{color:#666;margin:4px 0 8px}
.grid{border-collapse:collapse}.grid td,.grid th{padding:1px;font-weight:normal;color:#666}
canvas.cell{display:block;cursor:pointer;border:1px solid #ddd}
canvas.cell.on{outline:2px solid #d33}
.bar{margin:6px 0}.readout{font-family:monospace;min-height:1.4em;margin:4px 0}
.hv text{cursor:pointer;font-size:13px}.hv text.focus{font-weight:bold;fill:#d33}
.tok{padding:1px 3px;margin:1px;border-radius:3px;display:inline-block}
.word{outline:2px solid #d33}.sent{margin:6px 0}
table.sim td{width:48px;height:22px;text-align:center;font-family:monospace}
"""

_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>{css}</style></head>
<body><h1>{title}</h1><div id="app"></div>
<script type="application/json" id="attnjax-data">{data}</script>
<script>{script}</script>
</body></html>
"""
