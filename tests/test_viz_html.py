"""attnjax.viz.html without a browser: the data a page embeds, tiles from lse, files, errors.

What the pages do in Chromium is tested in tests/test_viz_browser.py.
"""

import base64
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attnjax
from attnjax.analysis import AttentionPatterns
from attnjax.analysis.contextual import ContextualSimilarity
from attnjax.analysis.word import WordFocus, WordInContext
from attnjax.functional import Masking
from attnjax.viz import html

HALF_STEP = 0.5 / 255 + 1e-6  # the page holds round(√p · 255)


def random_patterns(rng, shape):
    """Softmax rows of random scores, float64: [..., T, T]."""
    scores = rng.normal(size=shape) * 2
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True)


def page_data(view: html.HtmlView) -> dict:
    match = re.search(r'id="attnjax-data">(.*?)</script>', view.html, re.S)
    return json.loads(match.group(1))


def decode(data: dict, name: str, dtype) -> np.ndarray:
    return np.frombuffer(base64.b64decode(data[name]), dtype)


def test_dense_page_holds_every_weight_to_8_bits(key):
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**30)))
    p = random_patterns(rng, (2, 3, 9, 9))
    tokens = [f"t{i}" for i in range(9)]
    data = page_data(html.model_view(p, tokens=tokens))
    assert (data["L"], data["N"], data["T"], data["k"]) == (2, 3, 9, 0)
    assert data["tokens"] == tokens and "indices" not in data
    small = html.PatternRows.from_patterns(np.full((1, 1, 3, 3), 1e-3), top_k=None)
    assert small.value(0, 0, 1, 2) == pytest.approx(1e-3, rel=0.05)  # 8 bits of p would give 0
    root = decode(data, "values", np.uint8).reshape(p.shape) / 255  # 8 bits of √p
    np.testing.assert_allclose(root, np.sqrt(p), atol=HALF_STEP)


def test_long_rows_keep_their_top_k_largest_weights(key):
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**30)))
    p = random_patterns(rng, (2, 2, 40, 40))
    rows = html.PatternRows.from_patterns(p, top_k=5)
    expected = np.argsort(-p, axis=-1)[..., :5]  # float64 reference, largest first
    np.testing.assert_array_equal(rows.indices, expected)
    np.testing.assert_allclose(
        rows.values / 255, np.sqrt(np.take_along_axis(p, expected, -1)), atol=HALF_STEP
    )
    assert rows.kept == pytest.approx(np.sort(p, -1)[..., -5:].sum(-1).mean())
    data = rows.payload()
    np.testing.assert_array_equal(decode(data, "indices", "<u2"), expected.ravel())
    layer, head, query = 1, 0, 7
    key_kept = int(expected[layer, head, query, 2])
    dropped = int(np.argsort(p[layer, head, query])[0])  # the smallest weight: not kept
    assert rows.value(layer, head, query, key_kept) == pytest.approx(
        p[layer, head, query, key_kept], abs=2 * HALF_STEP
    )
    assert rows.value(layer, head, query, dropped) == 0.0


def test_default_is_dense_up_to_dense_max_t_then_top_k():
    small = np.full((1, 1, html.DENSE_MAX_T, html.DENSE_MAX_T), 1 / html.DENSE_MAX_T)
    assert html.PatternRows.from_patterns(small).indices is None
    t = html.DENSE_MAX_T + 1
    long = html.PatternRows.from_patterns(np.full((1, 1, t, t), 1 / t))
    assert long.values.shape == (1, 1, t, html.DEFAULT_TOP_K)


def test_tiles_from_lse_match_float64_softmax_top_k(key):
    kq, kk = jax.random.split(key)
    b, t, n, k, h = 2, 40, 2, 1, 8  # grouped-query: 2 query heads share 1 kv head
    q = jax.random.normal(kq, (b, t, n, h))
    kx = jax.random.normal(kk, (b, t, k, h))
    causal = np.tril(np.ones((t, t), bool))
    queries, keys, lses, ref = [], [], [], []
    for scale in (1.0, 0.5):  # two "layers" with different queries
        # float64 reference: causal softmax of scaled q·k per head, and its log-sum-exp.
        qn = np.asarray(q, np.float64) * scale
        kn = np.repeat(np.asarray(kx, np.float64), n // k, axis=2)
        scores = np.einsum("btnh,bsnh->bnts", qn, kn) / np.sqrt(h)
        scores = np.where(causal, scores, -np.inf)
        top = scores.max(-1, keepdims=True)
        lse = top[..., 0] + np.log(np.exp(scores - top).sum(-1))  # [B, N, T]
        queries.append(q * scale)
        keys.append(kx)
        lses.append(jnp.asarray(lse, jnp.float32))
        ref.append(np.exp(scores - lse[..., None])[1])  # example 1: [N, T, T]
    rows = html.PatternRows.from_lse(
        queries, keys, lses, batch=1, top_k=6, block=16, masking=Masking(is_causal=True)
    )
    expected = html.PatternRows.from_patterns(np.stack(ref), top_k=6)
    np.testing.assert_allclose(rows.values, expected.values, atol=1)  # within one 8-bit step
    assert rows.kept == pytest.approx(expected.kept, abs=1e-4)
    kept = rows.values > 2  # where ties between near-equal small weights cannot reorder
    np.testing.assert_array_equal(rows.indices[kept], expected.indices[kept])
    assert (rows.indices[:, :, 0, 0] == 0).all()  # the first query sees only itself


def test_word_view_embeds_focus_rows_and_similarity(key):
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**30)))
    focus = tuple(
        WordFocus(tokens, (pos,), rng.dirichlet(np.ones(len(tokens)), size=(2, 3)))
        for tokens, pos in ((("[CLS]", "a", "mole", "[SEP]"), 2), (("[CLS]", "mole", "[SEP]"), 1))
    )
    similarity = rng.uniform(-1, 1, size=(3, 2, 2))
    patterns = AttentionPatterns(
        np.zeros((2, 2, 3, 4, 4)), [f.tokens for f in focus], np.arange(4) < [[4], [3]], False
    )
    result = WordInContext(
        "mole", ("a mole", "mole"), patterns, focus,
        ContextualSimilarity("mole", ((2,), (1,)), np.zeros((3, 2, 4)), similarity),
    )  # fmt: skip
    data = page_data(html.word_view(result))
    assert data["view"] == "word" and data["sentences"] == ["a mole", "mole"]
    np.testing.assert_allclose(data["focus"][1]["rows"], focus[1].rows, atol=5e-5)
    np.testing.assert_allclose(data["similarity"], similarity, atol=5e-5)
    with pytest.raises(ValueError, match="WordInContext"):
        html.word_view(object())


def test_page_is_self_contained_and_saved_atomically(tmp_path):
    tokens = ["<b>", "</script>", "a&b"]
    view = html.head_view(np.full((1, 2, 3, 3), 1 / 3), tokens=tokens)
    page = view.html
    for reference in ("src=", "href=", "@import", "url(", "require("):
        assert reference not in page  # nothing to load: no network at view time
    assert '</script>"' not in page and page_data(view)["tokens"] == tokens
    assert view.nbytes == len(page.encode())
    path = view.save(tmp_path / "views" / "heads.html")
    assert path.read_text() == page
    assert sorted(p.name for p in path.parent.iterdir()) == ["heads.html"]  # no temp left
    frame = view._repr_html_()
    assert frame.startswith("<iframe srcdoc=") and "&lt;!doctype html&gt;" in frame
    with pytest.raises(ValueError, match="path must end in .html"):
        view.save(tmp_path / "heads.png")


def test_attention_patterns_pick_the_example_trimmed_to_its_tokens(key):
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**30)))
    p = random_patterns(rng, (2, 2, 3, 5, 5))  # [L, B, N, T, T]
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
    patterns = AttentionPatterns(p, [list("abcde"), list("xyz")], mask, causal=False)
    data = page_data(html.pattern_view(patterns, example=1, layer=1, head=2))
    assert data["tokens"] == ["x", "y", "z"] and (data["layer"], data["head"]) == (1, 2)
    root = decode(data, "values", np.uint8).reshape(2, 3, 3, 3) / 255
    np.testing.assert_allclose(root, np.sqrt(p[:, 1, :, :3, :3]), atol=HALF_STEP)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: html.model_view(p[0]), r"patterns must have shape \[L, N, T, T\]"),
        (lambda p: html.model_view(p, tokens=["a"]), "tokens has 1 strings"),
        (lambda p: html.model_view(p, top_k=0), "top_k"),
        (lambda p: html.pattern_view(p, layer=2), r"layer=2 out of range \(0..1\)"),
        (lambda p: html.pattern_view(p, head=-1), "head"),
        (lambda p: html.head_view(p, heads=[5]), r"heads=5 out of range"),
        (lambda p: html.PatternRows.from_lse([], [], []), "one entry per layer"),
    ],
)
def test_bad_arguments_are_value_errors_naming_them(call, message, without_jaxtyping):
    with pytest.raises(ValueError, match=message):
        call(np.full((2, 3, 4, 4), 0.25))


def test_from_lse_works_without_a_full_pattern_at_t_4096(key):
    kq, kk = jax.random.split(key)
    t = 4096
    q = jax.random.normal(kq, (1, t, 1, 16))
    kx = jax.random.normal(kk, (1, t, 1, 16))
    attend = lambda q, k: attnjax.dot_product_attention(  # noqa: E731
        q, k, k, implementation="blocked", return_lse=True
    )[1]
    lse = jax.jit(attend)(q, kx)
    rows = html.PatternRows.from_lse([q], [kx], [lse], top_k=8, block=512)
    assert rows.values.shape == (1, 1, t, 8) and rows.indices.max() < t
    query = 1234  # one row in float64: softmax of q·k / sqrt(H)
    scores = np.asarray(kx, np.float64)[0, :, 0] @ np.asarray(q, np.float64)[0, query, 0] / 4
    row = np.exp(scores - scores.max())
    row /= row.sum()
    best = np.argsort(-row)[:8]
    root = rows.values[0, 0, query] / 255
    np.testing.assert_allclose(root, np.sqrt(row[best]), atol=HALF_STEP + 2e-4)
    assert jnp.asarray(rows.indices[0, 0, query, 0]) == best[0]
