"""Measure the HTML attention views in headless Chromium, and make the README's screenshots.

    uv run python scripts/html_views.py measure --out=/tmp/views
    uv run python scripts/html_views.py screenshots --out=docs/views

``measure``: a model view of a random 6-layer, 12-head model at T = 512 (full patterns, cut
to each row's top 16) and one at T = 4096 built from tiles of the blocked path's lse (no
[T, T] array); prints page size, build time, and in Chromium (network blocked) the time to
first contentful paint and to the end of the view's script (both from navigation start),
for each of ``--opens`` loads. ``screenshots``: the bundled MiniLM on the three "mole"
sentences, the pages of ``experiments.patterns --html`` and small PNGs of three of them.
Needs Debian's chromium and chromium-driver (see .ci/run).
"""

from __future__ import annotations

import argparse
import io
import pathlib
import sys
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import attnjax  # noqa: E402
from attnjax.viz import html  # noqa: E402
from tests._browser import Browser  # noqa: E402

TIMES = (
    "const p = performance.getEntriesByName('first-contentful-paint')[0];"
    "return [p ? p.startTime : null, +document.body.dataset.readyMs]"
)


def open_timed(browser: Browser, path: pathlib.Path, opens: int) -> list[tuple]:
    """(first paint ms, script done ms, requests) for each load of ``path``."""
    results = []
    for _ in range(opens):
        browser.get("about:blank")
        browser.requests()
        browser.get(path.as_uri())
        paint, ready = browser.run(TIMES)
        results.append((paint, ready, len(browser.requests())))
    return results


def random_patterns(layers: int, heads: int, length: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(layers, heads, length, length)).astype(np.float32) * 3
    scores -= scores.max(-1, keepdims=True)
    p = np.exp(scores)
    return p / p.sum(-1, keepdims=True)


def long_rows(layers: int, heads: int, length: int, width: int = 32) -> html.PatternRows:
    """Random queries/keys per layer, lse from the blocked path, rows from its tiles."""
    attend = jax.jit(
        lambda q, k: attnjax.dot_product_attention(
            q, k, k, is_causal=True, implementation="blocked", return_lse=True
        )[1]
    )
    queries, keys, lses = [], [], []
    for layer in range(layers):
        kq, kk = jax.random.split(jax.random.key(layer))
        q = jax.random.normal(kq, (1, length, heads, width))
        k = jax.random.normal(kk, (1, length, heads, width))
        queries.append(q)
        keys.append(k)
        lses.append(attend(q, k))
    masking = attnjax.functional.Masking(is_causal=True)
    return html.PatternRows.from_lse(queries, keys, lses, top_k=16, block=512, masking=masking)


def measure(out: pathlib.Path, opens: int) -> None:
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cases = []
    start = time.perf_counter()
    p = random_patterns(6, 12, 512)
    view = html.model_view(p)
    cases.append(("6x12, T=512, full patterns -> top-16 rows", view, time.perf_counter() - start))
    start = time.perf_counter()
    rows = long_rows(6, 12, 4096)
    view = html.model_view(rows, title="6 layers x 12 heads, T = 4096, from lse tiles")
    cases.append(("6x12, T=4096, lse tiles -> top-16 rows", view, time.perf_counter() - start))
    browser = Browser()
    try:
        for name, view, seconds in cases:
            path = view.save(out / (name.split(",")[1].strip().replace("=", "") + ".html"))
            print(f"{name}: {view.nbytes / 1e6:.2f} MB, built in {seconds:.1f} s -> {path}")
            for paint, ready, requests in open_timed(browser, path, opens):
                print(f"  first paint {paint:.0f} ms, view drawn {ready:.0f} ms, "
                      f"requests {requests} (the file itself)")  # fmt: skip
    finally:
        browser.close()


def screenshots(out: pathlib.Path) -> None:
    from PIL import Image

    from attnjax import pretrained
    from attnjax.analysis import word_in_context
    from experiments.patterns import MOLE_SENTENCES

    out = out.resolve()
    model, tokenizer = pretrained.load()
    result = word_in_context(model, tokenizer, MOLE_SENTENCES, "mole")
    pages = html.save_word_in_context_views(result, out)
    print("pages:", ", ".join(f"{p.name} ({p.stat().st_size} B)" for p in pages))
    browser = Browser()
    try:
        shots = {
            "model_view.png": (
                "s2_model_view.html",
                (1240, 690),
                'canvas.cell[data-layer="2"][data-head="5"]',
            ),  # noqa: E501
            "head_view.png": ("s2_head_view.html", (640, 340), 'text.q[data-index="7"]'),
            "word_view.png": ("mole_in_context.html", (900, 470), None),
        }
        for name, (page, size, target) in shots.items():
            browser.cdp(
                "Emulation.setDeviceMetricsOverride",
                width=size[0], height=size[1], deviceScaleFactor=1, mobile=False,
            )  # fmt: skip
            browser.get((out / page).as_uri())
            if target:
                browser.click(browser.find(target))
            if name == "model_view.png":  # pointer on a cell of the enlarged head
                browser.move(browser.find("canvas.heatmap"), 60, 40)
            image = Image.open(io.BytesIO(browser.screenshot())).convert("RGB")
            small = image.quantize(colors=64)
            small.save(out / name, optimize=True)
            print(f"{name}: {image.size}, {(out / name).stat().st_size} B")
    finally:
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["measure", "screenshots"])
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--opens", type=int, default=3)
    args = parser.parse_args()
    if args.what == "measure":
        measure(args.out, args.opens)
    else:
        screenshots(args.out)


if __name__ == "__main__":
    main()
