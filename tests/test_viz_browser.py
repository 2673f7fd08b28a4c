"""The HTML views in a real browser: headless Chromium (Debian's chromium + chromium-driver)
driven over WebDriver from one session per module, the network blocked and recorded.

Skipped with the reason where Chromium or its driver is not installed (.ci/run installs them).
"""

import io

import numpy as np
import pytest

from attnjax.analysis import AttentionPatterns
from attnjax.analysis.contextual import ContextualSimilarity
from attnjax.analysis.word import WordFocus, WordInContext
from attnjax.viz import html
from tests import _browser

pytestmark = pytest.mark.skipif(_browser.available() is not None, reason=str(_browser.available()))

L, N, T = 2, 3, 7
TOKENS = [f"tok{i}" for i in range(T)]


@pytest.fixture(scope="module")
def browser():
    session = _browser.Browser()
    yield session
    session.close()


@pytest.fixture(scope="module")
def weights():
    """Random softmax rows [L, N, T, T] (fresh each run)."""
    rng = np.random.default_rng()
    scores = rng.normal(size=(L, N, T, T)) * 2
    p = np.exp(scores - scores.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def pages(tmp_path_factory, weights):
    """Each view saved as a file: {name: file URL}."""
    folder = tmp_path_factory.mktemp("views")
    rng = np.random.default_rng()
    long = rng.dirichlet(np.full(300, 0.05), size=(1, 1, 300))  # T = 300: top-k rows
    views = {
        "model": html.model_view(weights, tokens=TOKENS),
        "head": html.head_view(weights, tokens=TOKENS),
        "pattern": html.pattern_view(long, top_k=8),
        "word": html.word_view(word_result(rng)),
    }
    return {name: view.save(folder / f"{name}.html").as_uri() for name, view in views.items()}


def word_result(rng) -> WordInContext:
    focus = tuple(
        WordFocus(tokens, (pos,), rng.dirichlet(np.ones(len(tokens)), size=(L, N)))
        for tokens, pos in ((("[CLS]", "a", "mole", "[SEP]"), 2), (("[CLS]", "mole", "[SEP]"), 1))
    )
    patterns = AttentionPatterns(
        np.zeros((L, 2, N, 4, 4)), [f.tokens for f in focus], np.arange(4) < [[4], [3]], False
    )
    similarity = rng.uniform(-1, 1, size=(L + 1, 2, 2))
    return WordInContext(
        "mole", ("a mole", "mole"), patterns, focus,
        ContextualSimilarity("mole", ((2,), (1,)), np.zeros((L + 1, 2, 4)), similarity),
    )  # fmt: skip


def open_page(browser, url: str) -> None:
    browser.requests()  # forget what came before
    browser.get(url)
    assert browser.run("return document.body.dataset.ready") == "1"


def lines(browser) -> set[tuple[int, int, int]]:
    """(query, key, head) of each line drawn in the head view."""
    found = browser.run(
        "return [...document.querySelectorAll('#lines line')]"
        ".map(l => [+l.dataset.q, +l.dataset.k, +l.dataset.head])"
    )
    return {tuple(line) for line in found}


def expected_lines(weights, layer: int, query: int) -> set[tuple[int, int, int]]:
    held = (np.rint(np.sqrt(weights[layer]) * 255) / 255) ** 2  # what the page holds: 8-bit √p
    return {(query, s, h) for h in range(N) for s in range(T) if held[h, query, s] >= 0.02}


def test_pages_load_with_no_request_leaving_them(browser, pages):
    for url in pages.values():
        open_page(browser, url)
        assert browser.requests() == [url]  # only the file itself
        assert browser.run("return performance.getEntriesByType('resource').length") == 0
        errors = [e for e in browser.call("POST", "/se/log", {"type": "browser"})
                  if e["level"] == "SEVERE"]  # fmt: skip
        assert errors == []


def test_model_view_grid_has_every_layer_and_head(browser, pages):
    open_page(browser, pages["model"])
    cells = browser.run(
        "return [...document.querySelectorAll('canvas.cell')]"
        ".map(c => [+c.dataset.layer, +c.dataset.head])"
    )
    assert len(cells) == L * N and {tuple(c) for c in cells} == {
        (layer, head) for layer in range(L) for head in range(N)
    }


def test_enlarged_head_shows_the_value_under_the_pointer(browser, pages, weights):
    open_page(browser, pages["model"])
    layer, head, query, key = 1, 2, 3, 5
    browser.click(browser.find(f'canvas.cell[data-layer="{layer}"][data-head="{head}"]'))
    canvas = browser.find("canvas.heatmap")
    shown = browser.run("const c = arguments[0]; return [+c.dataset.layer, +c.dataset.head, "
                        "+c.dataset.margin, +c.dataset.plot, c.width]", canvas)  # fmt: skip
    assert shown[:2] == [layer, head]
    margin, plot, width = shown[2:]
    cell = plot / T
    browser.move(canvas, margin + (key + 0.5) * cell - width / 2,
                 margin + (query + 0.5) * cell - width / 2)  # fmt: skip
    readout = browser.run("const d = document.querySelector('.readout'); "
                          "return [d.textContent, {...d.dataset}]")  # fmt: skip
    text, data = readout
    assert (int(data["query"]), int(data["key"])) == (query, key)
    shown = np.sqrt(float(data["value"]))  # the page holds √p to 8 bits
    assert shown == pytest.approx(np.sqrt(weights[layer, head, query, key]), abs=0.5 / 255 + 1e-6)
    assert f'"tok{query}"' in text and f'"tok{key}"' in text


def test_head_view_hover_focuses_click_locks_and_unlocks(browser, pages, weights):
    open_page(browser, pages["head"])
    everything = lines(browser)
    token = lambda side, i: browser.find(f'text.{side}[data-index="{i}"]')  # noqa: E731
    locked = lambda: browser.run("return document.querySelector('svg.hv').dataset.locked")  # noqa: E731

    browser.move(token("q", 2))
    assert lines(browser) == expected_lines(weights, 0, 2) != everything
    browser.move(token("q", 5))  # not locked: the focus follows the pointer
    assert lines(browser) == expected_lines(weights, 0, 5)

    browser.click(token("q", 2))
    assert locked() == "q2"
    browser.move(token("q", 5))  # locked: stays on token 2
    assert lines(browser) == expected_lines(weights, 0, 2)
    browser.click(token("q", 2))  # click again: unlocked
    assert locked() == ""
    browser.move(token("q", 5))
    assert lines(browser) == expected_lines(weights, 0, 5)
    browser.move(browser.find("h1"))  # pointer off the tokens: every line again
    assert lines(browser) == everything


def test_pattern_view_zooms_and_pans_a_long_sequence(browser, pages):
    open_page(browser, pages["pattern"])
    view = "const c = document.querySelector('canvas.heatmap'); return [+c.dataset.r0, +c.dataset.c0, +c.dataset.span]"  # noqa: E501
    assert browser.run(view) == [0, 0, 300]
    browser.click(browser.find("button.zoom-in"))
    browser.click(browser.find("button.zoom-in"))
    r0, c0, span = browser.run(view)
    assert span == 75 and (r0, c0) == (113, 113)  # zoomed about the centre (150)
    canvas = browser.find("canvas.heatmap")
    # Drag 160 px up and left: the window moves 160 / 480 · 75 = 25 cells down and right.
    browser._pointer([
        {"type": "pointerMove", "origin": canvas, "x": 100, "y": 100},
        {"type": "pointerDown", "button": 0},
        {"type": "pointerMove", "origin": canvas, "x": -60, "y": -60},
        {"type": "pointerUp", "button": 0},
    ])  # fmt: skip
    assert browser.run(view) == [138, 138, 75]
    browser.click(browser.find("button.reset"))
    assert browser.run(view) == [0, 0, 300]


def test_word_view_follows_the_layer_slider(browser, pages):
    open_page(browser, pages["word"])
    data = word_result_from_page(browser)
    weights = browser.run(
        "return [...document.querySelectorAll('.sent')[1].querySelectorAll('.tok')]"
        ".map(s => +s.dataset.weight)"
    )
    np.testing.assert_allclose(weights, np.mean(data["focus"][1]["rows"][0], axis=0), atol=1e-6)
    browser.run("const s = document.querySelector('input.layer'); s.value = 1; "
                "s.dispatchEvent(new Event('input'))")  # fmt: skip
    cell = browser.run(
        "return document.querySelectorAll('table.sim')[0].rows[1].cells[2].textContent"
    )
    assert cell == f"{data['similarity'][2][0][1]:.2f}"  # layer 1's output = index 2


def word_result_from_page(browser) -> dict:
    import json

    return json.loads(browser.run("return document.getElementById('attnjax-data').textContent"))


def test_screenshot_is_not_blank(browser, pages):
    from PIL import Image

    browser.cdp(
        "Emulation.setDeviceMetricsOverride", width=800, height=500, deviceScaleFactor=1,
        mobile=False,
    )  # fmt: skip
    open_page(browser, pages["model"])
    image = np.asarray(Image.open(io.BytesIO(browser.screenshot())).convert("RGB"))
    assert image.shape[:2] == (500, 800)
    not_white = (image < 240).any(axis=-1).mean()
    colours = len(np.unique(image.reshape(-1, 3), axis=0))
    assert not_white > 0.02 and colours > 20, (not_white, colours)
