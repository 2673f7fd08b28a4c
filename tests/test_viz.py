"""attnjax.viz.attention: figures have the right axes, token labels, masked cells and PNGs."""

import numpy as np
import pytest

from attnjax.viz.attention import (
    attention_heatmap,
    circuit_spectra_plot,
    head_grid,
    query_attention_by_layer,
    similarity_by_layer_plot,
)

TOKENS = ["[CLS]", "one", "mole", "of", "co2", "[SEP]"]


def causal_patterns(rng, layers, heads, size):
    logits = rng.normal(size=(layers, heads, size, size))
    causal = np.tril(np.ones((size, size), bool))
    weights = np.where(causal, np.exp(logits), 0.0)
    return weights / weights.sum(-1, keepdims=True), causal


def labels(tick_labels):
    return [t.get_text() for t in tick_labels]


def test_heatmap_has_tokens_on_both_axes_and_masked_cells(tmp_path):
    rng = np.random.default_rng(0)
    patterns, causal = causal_patterns(rng, 1, 1, len(TOKENS))
    path = tmp_path / "sub" / "grid.png"
    fig = attention_heatmap(patterns[0, 0], TOKENS, mask=causal, title="L0 H0", path=path)
    assert len(fig.axes) == 2  # the grid and its colour bar
    ax = fig.axes[0]
    assert labels(ax.get_xticklabels()) == TOKENS and labels(ax.get_yticklabels()) == TOKENS
    image = ax.images[0].get_array()
    np.testing.assert_array_equal(np.ma.getmaskarray(image), ~causal)
    np.testing.assert_allclose(image[causal], patterns[0, 0][causal], rtol=1e-6)
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"


def test_heatmap_rejects_mismatched_tokens_and_mask():
    pattern = np.full((3, 3), 1 / 3)
    with pytest.raises(ValueError, match="query_tokens"):
        attention_heatmap(pattern, ["a", "b"])
    with pytest.raises(ValueError, match="mask"):
        attention_heatmap(pattern, ["a", "b", "c"], mask=np.ones((3, 2), bool))


def test_head_grid_has_one_axes_per_layer_and_head(tmp_path):
    rng = np.random.default_rng(1)
    patterns, causal = causal_patterns(rng, 2, 3, len(TOKENS))
    path = tmp_path / "overview.png"
    fig = head_grid(patterns, TOKENS, mask=causal, path=path, title="overview")
    grid_axes = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert len(fig.axes) == 2 * 3 + 1 and len(grid_axes) == 6
    assert labels(grid_axes[0].get_yticklabels()) == TOKENS  # first column
    assert labels(grid_axes[-1].get_xticklabels()) == TOKENS  # bottom row
    for index, ax in enumerate(grid_axes):
        image = ax.images[0].get_array()
        np.testing.assert_array_equal(np.ma.getmaskarray(image), ~causal)
        layer, head = divmod(index, 3)
        np.testing.assert_allclose(image.filled(0), patterns[layer, head], rtol=1e-6)
    assert path.stat().st_size > 1000
    two = head_grid(patterns, TOKENS, layers=[1], heads=[0, 2])
    assert len(two.axes) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(layers=[5]), r"layers=\[5\] must be .* indices in \[0, 2\)"),
        (dict(layers=[-1]), r"layers=\[-1\] must be .* in \[0, 2\)"),
        (dict(layers=[]), r"layers=\[\] must be a non-empty list"),
        (dict(heads=[0, 3]), r"heads=\[0, 3\] must be .* indices in \[0, 3\)"),
        (dict(heads=[1.0]), r"heads=\[1.0\] must be"),
        (dict(heads=[True]), r"heads=\[True\] must be"),
    ],
)
def test_head_grid_rejects_layers_or_heads_out_of_range(kwargs, message, monkeypatch):
    import jaxtyping

    monkeypatch.setattr(jaxtyping.config, "jaxtyping_disable", True)  # as users run it
    patterns, causal = causal_patterns(np.random.default_rng(4), 2, 3, len(TOKENS))
    with pytest.raises(ValueError, match=message):
        head_grid(patterns, TOKENS, mask=causal, **kwargs)


def test_head_grid_takes_numpy_integer_indices():
    patterns, _ = causal_patterns(np.random.default_rng(5), 2, 3, len(TOKENS))
    picked = head_grid(patterns, TOKENS, layers=[np.int64(1)], heads=[np.int64(2)])
    np.testing.assert_allclose(picked.axes[0].images[0].get_array(), patterns[1, 2], rtol=1e-6)


def test_query_attention_by_layer_averages_a_words_pieces():
    rng = np.random.default_rng(2)
    patterns, _ = causal_patterns(rng, 3, 4, len(TOKENS))
    fig = query_attention_by_layer(patterns, TOKENS, [2, 3])
    mean_image = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(mean_image, patterns[:, :, 2:4].mean(axis=(1, 2)), rtol=1e-6)
    max_image = fig.axes[1].images[0].get_array()
    np.testing.assert_allclose(max_image, patterns[:, :, 2:4].mean(axis=2).max(1), rtol=1e-6)
    assert labels(fig.axes[0].get_xticklabels()) == TOKENS
    with pytest.raises(ValueError, match="query"):
        query_attention_by_layer(patterns, TOKENS, 9)


def test_circuit_and_similarity_plots(tmp_path):
    rng = np.random.default_rng(3)
    spectra = {
        "qk": np.sort(rng.uniform(size=(2, 3, 4)))[..., ::-1],
        "ov": rng.uniform(size=(2, 3, 5)),
    }
    fig = circuit_spectra_plot(spectra, path=tmp_path / "spectra.png")
    assert len(fig.axes) == 2 and all(len(ax.lines) == 2 * 3 for ax in fig.axes)
    assert (tmp_path / "spectra.png").stat().st_size > 1000
    similarity = rng.uniform(size=(7, 3, 3))
    names = ["shrew", "unit", "skin"]
    fig = similarity_by_layer_plot(similarity, names, word="mole", path=tmp_path / "sim.png")
    (ax,) = fig.axes
    assert len(ax.lines) == 3
    np.testing.assert_allclose(ax.lines[2].get_ydata(), similarity[:, 1, 2])
    assert labels(ax.get_xticklabels())[:2] == ["emb", "0"]
    assert (tmp_path / "sim.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="labels"):
        similarity_by_layer_plot(similarity, names[:2])


# ---- sweep plots --------------------------------------------------------------------------------


@pytest.fixture
def rng(request):
    import zlib

    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def sweep_cells(rng, seeds):
    """Cells of a 2 × 2 sweep from ``sweep_stats.aggregate``, and the old single-seed rows."""
    from attnjax.training import sweep_stats

    rows = [
        dict(heads=h, layers=n, variant="", params_total=1000 * n + h, params_attention=400 * n,
             seed=s, lr=1e-3, status="ok", accuracy=rng.uniform(), sequence_accuracy=rng.uniform(),
             eval_loss=rng.uniform(0.1, 2), val_accuracy=rng.uniform())
        for n in (1, 2) for h in (1, 2) for s in range(seeds)
    ]  # fmt: skip
    rows[0].update(status="nan", accuracy=None)  # 1 head, 1 layer: one seed fewer
    columns = ("heads", "layers", "params_total", "accuracy", "sequence_accuracy", "eval_loss")
    old = [{k: r[k] for k in (*columns, "status")} for r in rows if r["seed"] == seeds - 1]
    return sweep_stats.aggregate(rows)[0], old


def test_sweep_heatmap_annotates_mean_plus_minus_ci_and_old_rows_plainly(rng):
    from attnjax.viz.sweep import accuracy_heatmap

    cells, old = sweep_cells(rng, seeds=3)
    texts = [t.get_text() for t in accuracy_heatmap(cells).axes[0].texts]
    cell = next(c for c in cells if (c["heads"], c["layers"]) == (2, 2))
    assert f"{cell['accuracy']:.2f}\n±{cell['accuracy_ci95']:.2f}" in texts
    cells_one, _ = sweep_cells(rng, seeds=1)  # one seed: the interval is unknown, not 0
    assert "±?" in "".join(t.get_text() for t in accuracy_heatmap(cells_one).axes[0].texts)
    texts = [t.get_text() for t in accuracy_heatmap(old).axes[0].texts]
    assert f"{old[-1]['accuracy']:.2f}" in texts and not any("±" in t for t in texts)


def test_sweep_error_bars_come_from_the_ci_columns(rng):
    from matplotlib.container import ErrorbarContainer

    from attnjax.viz.sweep import accuracy_by_heads, metrics_vs_params

    cells, old = sweep_cells(rng, seeds=4)
    ax = accuracy_by_heads(cells).axes[0]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert [b.get_label() for b in bars] == ["1 layers", "2 layers"]
    ((segments,),) = [b.lines[2] for b in bars[1:]]  # 2 layers: one bar per head count
    spans = sorted(float(s[1, 1] - s[0, 1]) / 2 for s in segments.get_segments())
    expected = sorted(c["accuracy_ci95"] for c in cells if c["layers"] == 2)
    np.testing.assert_allclose(spans, expected, rtol=1e-6)
    loss_ax, acc_ax = metrics_vs_params(cells).axes
    assert all(isinstance(c, ErrorbarContainer) for c in acc_ax.containers)
    assert len(acc_ax.containers) == 2
    old_axes = metrics_vs_params(old).axes  # old rows: plain markers, no error bars
    assert not old_axes[1].containers and old_axes[1].lines
    assert len(accuracy_by_heads(old).axes[0].containers) == 2


def test_save_sweep_plots_writes_four_pngs(rng, tmp_path):
    from attnjax.viz.sweep import save_sweep_plots

    cells, old = sweep_cells(rng, seeds=2)
    for rows, where in ((cells, tmp_path / "new"), (old, tmp_path / "old")):
        paths = save_sweep_plots(rows, where)
        assert [p.name for p in paths] == [
            "accuracy_heatmap.png", "sequence_accuracy_heatmap.png", "metrics_vs_params.png",
            "accuracy_by_heads.png",
        ]  # fmt: skip
        assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
