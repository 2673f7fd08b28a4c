"""Which heads carry a behaviour: ablation effects and detector scores side by side.

- ``induction_report``: on a batch of an induction task, the rise of the masked loss when each
  head is zero-ablated (``ablation_scan``) next to the head detectors.
- ``word_ablation``: on a few sentences sharing a word (MiniLM and "mole" in three senses), how
  much zero-ablating each head changes the mean cosine similarity of the word's final vectors
  between sentences.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attnjax.analysis.contextual import find_word
from attnjax.analysis.detectors import DETECTORS, HeadDetectors, detect_heads
from attnjax.analysis.interventions import _compiled_metric, ablation_scan
from attnjax.functional._checks import as_int

__all__ = ["HeadReport", "WordAblation", "induction_report", "word_ablation"]


def masked_loss(inputs, targets, loss_mask):
    """The metric: mean cross-entropy of ``targets`` over ``loss_mask`` (a closure over them)."""
    targets, weights = jnp.asarray(targets), jnp.asarray(loss_mask, jnp.float32)

    def metric(logits):
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        picked = jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
        return -(picked * weights).sum() / jnp.maximum(weights.sum(), 1.0)

    return metric


@dataclasses.dataclass(frozen=True)
class HeadReport:
    """``ablation`` [L, N]: metric change when each head is zero-ablated (for a loss: its
    rise); ``clean``: the unablated metric; ``detectors``: scores of every head."""

    ablation: Any
    clean: float
    detectors: HeadDetectors

    def table(self, top: int | None = None) -> str:
        """One row per head, largest ablation effect first (``top`` rows, default all)."""
        grid = np.asarray(self.ablation)
        order = np.argsort(-np.abs(grid), axis=None)[: top or grid.size]
        scores = self.detectors.as_dict()
        header = f"{'layer':>5} {'head':>4} {'ablation Δ':>11} " + " ".join(
            f"{name:>15}" for name in DETECTORS
        )
        lines = [header]
        for flat in order:
            layer, head = divmod(int(flat), grid.shape[1])
            cells = " ".join(f"{scores[name][layer, head]:15.3f}" for name in DETECTORS)
            lines.append(f"{layer:5d} {head:4d} {grid[layer, head]:+11.4f} {cells}")
        return "\n".join(lines)


def induction_report(
    model, inputs, targets, loss_mask, *, seq_len: int = 8, seed: int = 0
) -> HeadReport:
    """Zero-ablation effect on the masked loss of the batch (``inputs``/``targets``/``loss_mask``
    [B, T]) and the detectors on ``seq_len`` random tokens repeated twice."""
    inputs = jnp.asarray(inputs)
    metric = masked_loss(inputs, targets, loss_mask)
    grid = ablation_scan(model, inputs, metric)
    clean = float(_compiled_metric(model, inputs, metric, {}))
    detectors = detect_heads(model, seq_len=as_int("seq_len", seq_len, minimum=2), seed=seed)
    return HeadReport(np.asarray(grid), clean, detectors)


@dataclasses.dataclass(frozen=True)
class WordAblation:
    """``effect`` [L, N]: change of the word's mean between-sentence cosine similarity (final
    layer) when each head is zero-ablated; ``clean``: the similarity without ablation."""

    effect: Any
    clean: float
    word: str

    def top(self, k: int = 5) -> list[tuple[int, int, float]]:
        grid = np.asarray(self.effect)
        order = np.argsort(-np.abs(grid), axis=None)[: as_int("k", k, minimum=1)]
        return [
            (int(i) // grid.shape[1], int(i) % grid.shape[1], float(grid.flat[i])) for i in order
        ]

    def table(self, k: int = 5) -> str:
        lines = [f"'{self.word}' similarity between sentences: {self.clean:.4f} unablated"]
        lines += [f"  layer {l} head {n}: {d:+.4f}" for l, n, d in self.top(k)]  # noqa: E741
        return "\n".join(lines)


def word_ablation(model, tokenizer, sentences: Sequence[str], word: str) -> WordAblation:
    """``ablation_scan`` of an encoder on ``sentences`` (one padded batch), metric: the mean
    pairwise cosine similarity of ``word``'s final vectors (mean over its pieces)."""
    if len(sentences) < 2:
        raise ValueError(f"sentences must hold at least 2 sentences, got {len(sentences)}")
    batch = tokenizer(list(sentences))
    pieces = [find_word(tokens, word) for tokens in batch.tokens]
    for index, found in enumerate(pieces):
        if not found:
            raise ValueError(f"word={word!r} is not in sentence {index}: {sentences[index]!r}")
    selector = np.zeros(np.shape(batch.input_ids), np.float32)
    for index, found in enumerate(pieces):
        selector[index, found] = 1.0 / len(found)
    selector = jnp.asarray(selector)

    def similarity(hidden):
        vectors = jnp.einsum("bt,btd->bd", selector, hidden.astype(jnp.float32))
        unit = vectors / jnp.linalg.norm(vectors, axis=-1, keepdims=True)
        cosine = unit @ unit.T
        count = cosine.shape[0]
        return (cosine.sum() - jnp.trace(cosine)) / (count * (count - 1))

    kwargs = dict(
        attention_mask=jnp.asarray(batch.attention_mask), token_types=jnp.asarray(batch.token_types)
    )
    inputs = jnp.asarray(batch.input_ids)
    grid = ablation_scan(model, inputs, similarity, **kwargs)
    clean = float(_compiled_metric(model, inputs, similarity, kwargs))
    return WordAblation(np.asarray(grid), clean, word)
