"""A ``tokenizers`` tokenizer that pads each batch to its longest sentence (no transformers)."""

from __future__ import annotations

import dataclasses
import pathlib
import warnings
from collections.abc import Sequence

import numpy as np

__all__ = ["TokenBatch", "Tokenizer"]

TOKENIZER_FILE = "tokenizer.json"
_PAD_TOKENS = ("[PAD]", "<pad>", "<|padding|>")


@dataclasses.dataclass(frozen=True)
class TokenBatch:
    """Sentences as ids, padded on the right to the longest one.

    ``input_ids``, ``attention_mask`` (1 = real token) and ``token_types`` are int32 [B, T];
    ``tokens`` holds each sentence's token strings, without padding.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_types: np.ndarray
    tokens: tuple[tuple[str, ...], ...]


class Tokenizer:
    """Wraps a ``tokenizers.Tokenizer`` read from ``tokenizer.json``.

    The file's own padding (MiniLM pads to 128) is switched off: a batch is padded to its
    longest sentence. Sentences longer than ``max_length`` tokens are truncated to their first
    ``max_length`` tokens (special tokens kept), with a ``UserWarning`` naming each one.
    ``tokenizer(["a b", "c"])`` → a ``TokenBatch``.
    """

    def __init__(self, backend, *, max_length: int, path: pathlib.Path | None = None):
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.backend = backend
        self.max_length = max_length
        self.path = path
        padding = backend.padding or {}
        backend.no_padding()
        backend.no_truncation()
        backend.enable_truncation(max_length)
        self.pad_id = int(padding.get("pad_id", self._first_known_id(_PAD_TOKENS)))

    @classmethod
    def from_file(cls, path: str | pathlib.Path, *, max_length: int) -> Tokenizer:
        """Read a ``tokenizer.json``; raises naming the file if it is missing or unreadable."""
        import tokenizers

        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (expected a tokenizers tokenizer.json)")
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"{path} is not a valid tokenizer.json: {error}") from None
        return cls(backend, max_length=max_length, path=path)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __call__(self, sentences: str | Sequence) -> TokenBatch:
        sentences = _as_sentences(sentences)
        encodings = self.backend.encode_batch(list(sentences))
        for i, encoding in enumerate(encodings):
            if not encoding.ids:
                raise ValueError(f"sentence {i} {sentences[i]!r} has no tokens")
        truncated = [i for i, encoding in enumerate(encodings) if encoding.overflowing]
        if truncated:
            self._warn_truncated(sentences, truncated)
        length = max(len(e.ids) for e in encodings)
        shape = (len(encodings), length)
        ids = np.full(shape, self.pad_id, np.int32)
        mask = np.zeros(shape, np.int32)
        types = np.zeros(shape, np.int32)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            ids[row, :n] = encoding.ids
            mask[row, :n] = 1
            types[row, :n] = encoding.type_ids
        tokens = tuple(tuple(e.tokens) for e in encodings)
        return TokenBatch(ids, mask, types, tokens)

    def _warn_truncated(self, sentences: list[str], indices: list[int]) -> None:
        self.backend.no_truncation()
        try:
            lengths = [len(self.backend.encode(sentences[i]).ids) for i in indices]
        finally:
            self.backend.enable_truncation(self.max_length)
        listed = "; ".join(f"sentence {i} has {n} tokens" for i, n in zip(indices, lengths))
        warnings.warn(
            f"{listed}: truncated to max_length={self.max_length} tokens (pretrained.load's "
            "max_length raises the limit, up to the model's number of positions)",
            UserWarning,
            stacklevel=3,
        )

    def decode(self, ids: Sequence[int]) -> str:
        """Text of a sequence of ids (special tokens skipped)."""
        return self.backend.decode([int(i) for i in ids])

    def _first_known_id(self, tokens: Sequence[str]) -> int:
        for token in tokens:
            token_id = self.backend.token_to_id(token)
            if token_id is not None:
                return token_id
        return 0

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, max_length={self.max_length}, "
            f"path={str(self.path)!r})"
        )


def _as_sentences(sentences: str | Sequence) -> list[str]:
    if isinstance(sentences, str):
        return [sentences]
    sentences = list(sentences)
    if not sentences:
        raise ValueError("sentences is empty; give at least one sentence")
    for i, sentence in enumerate(sentences):
        if not isinstance(sentence, str):
            raise ValueError(f"sentences[{i}] must be a str, got {type(sentence).__name__}")
    return sentences
