"""How one word's contextual vector changes with its sentence, layer by layer.

Find the word in each sentence's tokens (a word split into pieces is the mean of its
pieces), take its vector from every layer's hidden states (``all_hidden_states``
[L+1, B, T, D]: the embeddings, then each block's output), and compare the sentences by
cosine similarity per layer: [L+1, S, S]. If "mole" (animal, unit, skin) splits by meaning,
the similarities between senses fall as the layers go up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from attnjax.functional._types import ArrayT

__all__ = [
    "ContextualSimilarity",
    "contextual_similarity",
    "cosine_similarity_by_layer",
    "find_word",
    "word_vectors",
]

# Word-start markers of byte-level BPE (GPT-2) and SentencePiece; WordPiece marks continuations.
_WORD_START = ("Ġ", "▁")
_CONTINUATION = "##"


def _is_special(token: str) -> bool:
    return len(token) > 2 and token[0] in "[<" and token[-1] in "]>"


def _text(token: str) -> str:
    for marker in (*_WORD_START, _CONTINUATION):
        if token.startswith(marker):
            return token[len(marker) :]
    return token


def _continues_word(token: str, marker_style: bool) -> bool:
    """Whether ``token`` continues the word of the token before it."""
    if _is_special(token):
        return False
    if marker_style:  # GPT-2/SentencePiece: no start marker and a letter/digit → same word
        return not token.startswith(_WORD_START) and token[:1].isalnum()
    return token.startswith(_CONTINUATION)


def find_word(tokens: Sequence[str], word: str, occurrence: int = 0) -> list[int]:
    """Positions of the pieces of ``word`` in ``tokens`` (its ``occurrence``-th appearance).

    Matches whole words, case-insensitively: "mole" is ``[i]`` in [..., "mole", ...], the
    pieces of "biopsy" are ``[i, i+1]`` in [..., "bio", "##psy", ...], and "mole" does not
    match "mole" + "##s". Returns ``[]`` if the word is not there.
    """
    target = word.strip().lower()
    if not target:
        raise ValueError("word must be a non-empty string")
    marker_style = any(t.startswith(_WORD_START) for t in tokens)
    found = []
    for start, token in enumerate(tokens):
        if _is_special(token) or (start and _continues_word(token, marker_style)):
            continue
        text, end = _text(token).lower(), start + 1
        while len(text) < len(target) and end < len(tokens):
            if not _continues_word(tokens[end], marker_style):
                break
            text, end = text + _text(tokens[end]).lower(), end + 1
        next_continues = end < len(tokens) and _continues_word(tokens[end], marker_style)
        if text == target and not next_continues:
            found.append(list(range(start, end)))
    if occurrence >= len(found):
        return []
    return found[occurrence]


def word_vectors(
    all_hidden_states: Float[ArrayT, "L1 B T D"],
    positions: Sequence[Sequence[int]],
) -> Float[ArrayT, "L1 B D"]:
    """The word's vector in each sentence at every layer: the mean over its pieces
    ``positions[b]``."""
    states = jnp.asarray(all_hidden_states, jnp.float32)
    if len(positions) != states.shape[1]:
        raise ValueError(
            f"positions has {len(positions)} sentences, hidden states have B={states.shape[1]}"
        )
    vectors = []
    for b, pieces in enumerate(positions):
        if not pieces:
            raise ValueError(f"positions[{b}] is empty: the word is not in sentence {b}")
        vectors.append(states[:, b, jnp.asarray(pieces)].mean(axis=1))
    return jnp.stack(vectors, axis=1)


def cosine_similarity_by_layer(vectors: Float[ArrayT, "L1 S D"]) -> Float[ArrayT, "L1 S S"]:
    """Cosine similarity between every pair of sentences' vectors, per layer."""
    vectors = jnp.asarray(vectors, jnp.float32)
    norms = jnp.linalg.norm(vectors, axis=-1, keepdims=True)
    unit = vectors / jnp.maximum(norms, 1e-12)
    return jnp.einsum("LSD,LUD->LSU", unit, unit)


@dataclasses.dataclass(frozen=True)
class ContextualSimilarity:
    """One word across S sentences: its piece positions per sentence, vectors [L+1, S, D]
    and cosine similarities [L+1, S, S] (layer 0 = the embeddings)."""

    word: str
    positions: tuple[tuple[int, ...], ...]
    vectors: np.ndarray
    similarity: np.ndarray

    def mean_between_sentences(self) -> np.ndarray:
        """[L+1]: the mean similarity over all pairs of different sentences."""
        count = self.similarity.shape[-1]
        off_diagonal = ~np.eye(count, dtype=bool)
        return self.similarity[:, off_diagonal].mean(axis=-1)


def contextual_similarity(
    encoded: Any, word: str, sentences: Sequence[str] | None = None
) -> ContextualSimilarity:
    """The ``word``'s vectors and cosine similarities across the sentences of ``encoded``
    (from ``attnjax.pretrained.encode``: uses ``tokens`` and ``all_hidden_states``).

    Raises ``ValueError`` naming the word and the sentence when a sentence lacks the word.
    """
    positions = []
    for b, tokens in enumerate(encoded.tokens):
        pieces = find_word(list(tokens), word)
        if not pieces:
            sentence = sentences[b] if sentences is not None else " ".join(tokens)
            raise ValueError(
                f"word {word!r} is not in sentence {b} {sentence!r} (tokens: {list(tokens)})"
            )
        positions.append(tuple(pieces))
    vectors = word_vectors(encoded.all_hidden_states, positions)
    return ContextualSimilarity(
        word=word,
        positions=tuple(positions),
        vectors=np.asarray(vectors),
        similarity=np.asarray(cosine_similarity_by_layer(vectors)),
    )
