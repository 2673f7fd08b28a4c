"""Attention pictures (matplotlib, headless): grids with tokens, head overviews, circuit
spectra and contextual similarity across layers.

Every function returns a ``matplotlib.figure.Figure`` and, given ``path``, also writes it as
a PNG (parent folders created). Figures are made without pyplot (no GUI backend, nothing to
close, the notebook's own backend left alone); in Jupyter a returned figure displays itself.

Patterns are drawn with queries as rows and keys as columns; cells a query may not attend to
(``mask`` False: causal future, padding) are masked in the image and show as grey hatching.
"""

from __future__ import annotations

import itertools
import pathlib
from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np

from attnjax.functional._checks import as_int
from attnjax.viz._figures import new_figure, save_figure

__all__ = [
    "attention_heatmap",
    "circuit_spectra_plot",
    "head_grid",
    "query_attention_by_layer",
    "save_word_in_context_figures",
    "similarity_by_layer_plot",
]

CMAP = "viridis"


def _check_grid(pattern: np.ndarray, mask, name: str) -> np.ma.MaskedArray:
    if mask is None:
        mask = np.ones(pattern.shape, bool)
    mask = np.asarray(mask, bool)
    if mask.shape != pattern.shape:
        raise ValueError(f"mask must have the shape of {name} {pattern.shape}, got {mask.shape}")
    return np.ma.masked_array(pattern, mask=~mask)


def _masked_style(ax) -> None:
    """Masked cells are transparent; the axes behind them is grey and hatched."""
    ax.set_facecolor("0.88")
    ax.patch.set_hatch("///")
    ax.patch.set_edgecolor("0.65")


def _check_tokens(tokens: Sequence[str], size: int, name: str) -> list[str]:
    tokens = [str(t) for t in tokens]
    if len(tokens) != size:
        raise ValueError(f"{name} has {len(tokens)} tokens, the pattern has {size}")
    return tokens


def _check_indices(name: str, chosen, size: int) -> list[int]:
    """All of ``range(size)`` when ``chosen`` is None, else ``chosen`` checked to lie in it."""
    if chosen is None:
        return list(range(size))
    chosen = list(chosen)
    try:
        indices = [as_int(name, i, minimum=0) for i in chosen]
    except ValueError:
        indices = []
    if not indices or max(indices) >= size:
        raise ValueError(f"{name}={chosen} must be a non-empty list of indices in [0, {size})")
    return indices


def attention_heatmap(
    pattern,
    query_tokens: Sequence[str],
    key_tokens: Sequence[str] | None = None,
    mask=None,
    *,
    title: str | None = None,
    vmax: float | None = None,
    path=None,
):
    """One head's pattern [T, S] as a heat map: queries as rows, keys as columns.

    ``mask`` [T, S] (True = may attend) masks the other cells. The figure has two axes: the
    grid and its colour bar.
    """
    pattern = np.asarray(pattern, np.float32)
    if pattern.ndim != 2:
        raise ValueError(f"pattern must have shape [T, S], got {pattern.shape}")
    rows = _check_tokens(query_tokens, pattern.shape[0], "query_tokens")
    cols = _check_tokens(rows if key_tokens is None else key_tokens, pattern.shape[1], "key_tokens")
    image = _check_grid(pattern, mask, "pattern")
    size = max(3.0, 0.45 * max(pattern.shape) + 1.5)
    fig, ax = new_figure(figsize=(size + 1.0, size))
    _masked_style(ax)
    drawn = ax.imshow(image, cmap=CMAP, vmin=0.0, vmax=vmax)
    ax.set_xticks(range(len(cols)), cols, rotation=90)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    if title:
        ax.set_title(title)
    fig.colorbar(drawn, ax=ax, fraction=0.046, pad=0.04, label="attention")
    return save_figure(fig, path)


def head_grid(
    patterns,
    tokens: Sequence[str],
    mask=None,
    *,
    layers: Sequence[int | np.integer] | None = None,
    heads: Sequence[int | np.integer] | None = None,
    title: str | None = None,
    path=None,
):
    """Layer x head overview of one example's patterns [L, N, T, T] as small multiples.

    One axes per (layer, head) shown (rows: layers, columns: heads), all on one 0-1 colour
    scale, plus a shared colour bar. Tokens label the first column and the bottom row when
    there are at most 24 of them. ``mask`` [T, T] (True = may attend) masks cells.
    ``layers`` and ``heads`` pick rows and columns (indices in ``[0, L)`` and ``[0, N)``).
    """
    patterns = np.asarray(patterns, np.float32)
    if patterns.ndim != 4 or patterns.shape[2] != patterns.shape[3]:
        raise ValueError(f"patterns must have shape [L, N, T, T], got {patterns.shape}")
    tokens = _check_tokens(tokens, patterns.shape[2], "tokens")
    layers = _check_indices("layers", layers, patterns.shape[0])
    heads = _check_indices("heads", heads, patterns.shape[1])
    cell = 0.9 if len(tokens) <= 24 else 0.6
    fig, axes = new_figure(
        len(layers),
        len(heads),
        figsize=(cell * len(heads) + 1.8, cell * len(layers) + 1.2),
        squeeze=False,
    )
    label = len(tokens) <= 24
    for (i, layer), (j, head) in itertools.product(enumerate(layers), enumerate(heads)):
        ax = axes[i, j]
        _masked_style(ax)
        drawn = ax.imshow(
            _check_grid(patterns[layer, head], mask, "each pattern"), cmap=CMAP, vmin=0, vmax=1
        )
        ax.set_xticks(range(len(tokens)), tokens if label and i == len(layers) - 1 else [])
        ax.set_yticks(range(len(tokens)), tokens if label and j == 0 else [])
        ax.tick_params(labelsize=5, length=0)
        ax.tick_params(axis="x", labelrotation=90)
        if i == 0:
            ax.set_title(f"head {head}", fontsize=7)
        if j == 0:
            ax.set_ylabel(f"layer {layer}", fontsize=7)
    fig.colorbar(drawn, ax=axes, fraction=0.02, pad=0.01, label="attention")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def query_attention_by_layer(
    patterns,
    tokens: Sequence[str],
    query: int | Sequence[int],
    *,
    title: str | None = None,
    path=None,
):
    """Where one query token looks, layer by layer: two [L, S] maps of its pattern row, the
    mean over heads and the max over heads. ``query`` is a position or the positions of a
    word's pieces (their rows are averaged). Patterns [L, N, T, S]."""
    patterns = np.asarray(patterns, np.float32)
    if patterns.ndim != 4:
        raise ValueError(f"patterns must have shape [L, N, T, S], got {patterns.shape}")
    tokens = _check_tokens(tokens, patterns.shape[3], "tokens")
    rows = [query] if isinstance(query, int | np.integer) else list(query)
    if not rows or not all(0 <= q < patterns.shape[2] for q in rows):
        raise ValueError(f"query={query} must be positions in [0, {patterns.shape[2]})")
    row = patterns[:, :, rows].mean(axis=2)  # [L, N, S]
    fig, axes = new_figure(
        1, 2, figsize=(2 * (0.5 * len(tokens) + 1.5), 0.45 * len(row) + 1.8), squeeze=False
    )
    for ax, (name, values) in zip(
        axes[0], (("mean over heads", row.mean(1)), ("max over heads", row.max(1)))
    ):
        drawn = ax.imshow(values, cmap=CMAP, vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(tokens)), tokens, rotation=90)
        ax.set_yticks(range(len(row)), [f"layer {i}" for i in range(len(row))])
        ax.set_title(name, fontsize=9)
        for (i, j), value in np.ndenumerate(values):
            ax.text(
                j,
                i,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=6,
                color="black" if value > 0.6 else "white",
            )
    fig.colorbar(drawn, ax=axes[0].tolist(), fraction=0.03, pad=0.02, label="attention")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def circuit_spectra_plot(spectra: Mapping[str, np.ndarray], *, title: str | None = None, path=None):
    """Singular values of per-head circuits, one axes per entry of ``spectra`` (e.g.
    ``{"qk": [L, N, H], "ov": [L, N, R]}`` from ``attnjax.analysis.circuit_spectra``): one
    line per (layer, head), coloured by layer, on a log scale, each normalized by its largest
    value so the shape (how low-rank the map is) is visible. Titles give the mean effective
    rank ``exp(entropy(s / Σ s))``."""
    if not spectra:
        raise ValueError("spectra is empty")
    fig, axes = new_figure(1, len(spectra), figsize=(5 * len(spectra), 3.8), squeeze=False)
    for ax, (name, values) in zip(axes[0], spectra.items()):
        values = np.asarray(values, np.float64)
        if values.ndim != 3:
            raise ValueError(f"spectra[{name!r}] must have shape [L, N, r], got {values.shape}")
        colors = matplotlib.colormaps["plasma"](np.linspace(0.0, 0.85, values.shape[0]))
        for layer, head in itertools.product(range(values.shape[0]), range(values.shape[1])):
            s = values[layer, head]
            ax.plot(
                np.arange(1, len(s) + 1),
                s / max(s[0], 1e-30),
                color=colors[layer],
                alpha=0.6,
                lw=1,
                label=f"layer {layer}" if head == 0 else None,
            )
        ax.set_yscale("log")
        ax.set_xlabel("singular value index")
        ax.set_ylabel("σ_i / σ_1")
        p = values / np.maximum(values.sum(-1, keepdims=True), 1e-30)
        entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
        ax.set_title(
            f"{name.upper()} circuit per head\n(mean effective rank "
            f"{np.exp(entropy).mean():.1f} of {values.shape[-1]})",
            fontsize=10,
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def similarity_by_layer_plot(
    similarity,
    labels: Sequence[str],
    *,
    word: str | None = None,
    path=None,
):
    """Cosine similarity [L+1, S, S] of a word's vectors between sentences, per layer: one
    line per pair of sentences. Index 0 is the embeddings ("emb"), index i + 1 the output of
    layer i (layers counted from 0, as in the patterns)."""
    similarity = np.asarray(similarity, np.float64)
    if similarity.ndim != 3 or similarity.shape[1] != similarity.shape[2]:
        raise ValueError(f"similarity must have shape [L+1, S, S], got {similarity.shape}")
    labels = _check_tokens(labels, similarity.shape[1], "labels")
    fig, ax = new_figure(figsize=(7, 4))
    layers = np.arange(similarity.shape[0])
    for i, j in itertools.combinations(range(len(labels)), 2):
        ax.plot(layers, similarity[:, i, j], "o-", label=f"{labels[i]}  vs  {labels[j]}")
    ax.set_xticks(layers, ["emb"] + [str(i) for i in layers[:-1]])
    ax.set_xlabel("output of layer (emb = the embeddings, before layer 0)")
    ax.set_ylabel("cosine similarity")
    ax.set_title(f"{word!r} across sentences" if word else "similarity across sentences")
    ax.grid(alpha=0.3)
    if len(labels) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def save_word_in_context_figures(result, directory) -> list[pathlib.Path]:
    """PNGs of an ``attnjax.analysis.word_in_context`` result in ``directory``: per sentence
    ``s<i>_heads.png`` (layer x head overview) and ``s<i>_<word>.png`` (where the word looks,
    by layer), then ``<word>_similarity.png``. Returns the paths written."""
    directory = pathlib.Path(directory)
    slug = "".join(c if c.isalnum() else "_" for c in result.word.lower())
    patterns, paths = result.patterns, []
    for b, (sentence, focus) in enumerate(zip(result.sentences, result.focus)):
        grid = directory / f"s{b}_heads.png"
        head_grid(
            patterns.example(b),
            focus.tokens,
            mask=patterns.cell_mask(b),
            title=f'"{sentence}": every layer and head',
            path=grid,
        )
        looks = directory / f"s{b}_{slug}.png"
        query_attention_by_layer(
            patterns.example(b),
            focus.tokens,
            list(focus.positions),
            title=f'"{sentence}": where {result.word!r} looks',
            path=looks,
        )
        paths += [grid, looks]
    similarity = directory / f"{slug}_similarity.png"
    similarity_by_layer_plot(
        result.similarity.similarity, result.sentences, word=result.word, path=similarity
    )
    return [*paths, similarity]
