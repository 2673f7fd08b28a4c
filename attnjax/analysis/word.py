"""One word in several sentences: where it looks (its pattern rows) and how its vector moves.

``word_in_context(model, tokenizer, sentences, word)`` encodes the sentences with
``attnjax.pretrained``, and returns the patterns, the word's attention rows per sentence
(``WordFocus``) and the cosine similarity of its vectors across sentences per layer
(``ContextualSimilarity``). ``summary()`` prints it as text.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from attnjax.analysis.contextual import ContextualSimilarity, _is_special, contextual_similarity
from attnjax.analysis.patterns import AttentionPatterns, patterns_from_encoded

__all__ = ["WordFocus", "WordInContext", "word_focus", "word_in_context"]


@dataclasses.dataclass(frozen=True)
class WordFocus:
    """Where a word looks in one sentence: ``rows`` [L, N, n], the attention from the word
    (the mean over its pieces at ``positions``) to each of the sentence's n tokens."""

    tokens: tuple[str, ...]
    positions: tuple[int, ...]
    rows: np.ndarray

    def top_tokens(self, layer: int, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` tokens with the most attention in ``layer``, averaged over heads."""
        mean = self.rows[layer].mean(axis=0)
        return [(self.tokens[s], float(mean[s])) for s in np.argsort(mean)[::-1][:k]]

    def top_heads(self, layer: int, k: int = 3) -> list[tuple[int, str, float]]:
        """The ``k`` heads of ``layer`` that put the most weight on one *other* word of the
        sentence (not the word's own pieces, not special tokens like [CLS]/[SEP]):
        ``(head, token, weight)``."""
        others = [
            s
            for s, token in enumerate(self.tokens)
            if s not in self.positions and not _is_special(token)
        ]
        if not others:
            return []
        weights = self.rows[layer][:, others]  # [N, others]
        best = weights.argmax(axis=1)
        order = np.argsort(weights.max(axis=1))[::-1][:k]
        return [(int(n), self.tokens[others[best[n]]], float(weights[n, best[n]])) for n in order]


def word_focus(patterns: AttentionPatterns, example: int, positions: Sequence[int]) -> WordFocus:
    """The word's attention rows [L, N, n] in ``example`` (mean over its piece positions)."""
    if not positions:
        raise ValueError(f"positions is empty for example {example}")
    trimmed = patterns.example(example)  # [L, N, n, n]
    if max(positions) >= trimmed.shape[-1]:
        raise ValueError(f"positions {list(positions)} beyond the {trimmed.shape[-1]} tokens")
    rows = trimmed[:, :, list(positions)].mean(axis=2)
    return WordFocus(patterns.tokens[example], tuple(int(p) for p in positions), rows)


@dataclasses.dataclass(frozen=True)
class WordInContext:
    """A word across sentences: patterns, where it looks, how similar its vectors are."""

    word: str
    sentences: tuple[str, ...]
    patterns: AttentionPatterns
    focus: tuple[WordFocus, ...]
    similarity: ContextualSimilarity

    def summary(self, top: int = 3) -> str:
        """Text: for each sentence and layer, the tokens the word attends to most (mean over
        heads) and the top heads on other words; then the similarity of its vectors."""
        lines = []
        for sentence, focus in zip(self.sentences, self.focus):
            lines.append(f'"{sentence}": where {self.word!r} looks, per layer')
            lines.append(f"  tokens: {' '.join(focus.tokens)}")
            for layer in range(focus.rows.shape[0]):
                tokens = ", ".join(f"{t} {w:.2f}" for t, w in focus.top_tokens(layer, top))
                heads = ", ".join(f"h{n}→{t} {w:.2f}" for n, t, w in focus.top_heads(layer, top))
                lines.append(f"  layer {layer}: mean over heads: {tokens} | top heads: {heads}")
        if len(self.sentences) < 2:
            return "\n".join([*lines, "(one sentence: no similarity between sentences)"])
        lines.append(f"cosine similarity of the {self.word!r} vectors between sentences")
        lines.extend(f"  s{i} = {sentence!r}" for i, sentence in enumerate(self.sentences))
        lines.extend(similarity_table(self.similarity.similarity, len(self.sentences)))
        return "\n".join(lines)


def similarity_table(similarity: np.ndarray, count: int) -> list[str]:
    """Rows of text: one per pair of sentences (and their mean), one column per layer output
    (``emb`` = the embeddings, then layers 0, 1, ...)."""
    header = "   layer  " + "".join(
        f"{'emb' if i == 0 else i - 1:>7}" for i in range(similarity.shape[0])
    )
    lines = [header]
    pairs = list(itertools.combinations(range(count), 2))
    for i, j in pairs:
        lines.append(f"  s{i} vs s{j} " + "".join(f"{v:7.3f}" for v in similarity[:, i, j]))
    if len(pairs) > 1:
        mean = np.mean([similarity[:, i, j] for i, j in pairs], axis=0)
        lines.append("  mean     " + "".join(f"{v:7.3f}" for v in mean))
    return lines


def word_in_context(
    model: Any, tokenizer: Any, sentences: Sequence[str], word: str
) -> WordInContext:
    """Encode ``sentences`` with a pretrained model and follow ``word`` through them.

    Raises ``ValueError`` naming the word and the sentence if a sentence lacks the word.
    """
    from attnjax import pretrained  # a sibling package; imported only when text is given

    sentences = tuple(sentences)
    if not sentences or not all(isinstance(x, str) and x.strip() for x in sentences):
        raise ValueError(f"sentences must be non-empty strings, got {list(sentences)}")
    encoded = pretrained.encode(model, tokenizer, list(sentences))
    similarity = contextual_similarity(encoded, word, sentences)
    patterns = patterns_from_encoded(encoded, causal=model.config.is_causal)
    focus = tuple(
        word_focus(patterns, b, positions) for b, positions in enumerate(similarity.positions)
    )
    return WordInContext(word, sentences, patterns, focus, similarity)
