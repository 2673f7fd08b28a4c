"""Synthetic tasks that need attention, and character-level language modelling.

Every task is an infinite, seeded stream: ``task.batch(step, batch_size)`` is a pure function
of ``(task.seed, step, batch_size)``, so a resumed run sees exactly the batches it would have
seen without the interruption. Batches are NumPy arrays (generated on the host, fast):

- ``inputs``    [B, T] int32 token ids fed to the model,
- ``targets``   [B, T] int32 next-token ids (``targets[:, t]`` is the token after ``inputs[:, t]``),
- ``loss_mask`` [B, T] float32, 1 where the target is part of the task (an answer), 0 elsewhere.

Token 0 is padding everywhere. Tasks:

- ``recall``: multi-query associative recall. ``k1 v1 k2 v2 … kn vn`` then queries
  ``q1 a1 q2 a2 …`` where each ``q`` is one of the keys and ``a`` its value. Only the answers
  count. Solving it takes two attention hops (find the key, read the token after it), so a
  one-layer transformer stays near chance while two layers can form the induction circuit.
- ``induction``: a random sequence of ``prefix_len`` tokens, then the same sequence again;
  the repeated half is predictable only by looking back (induction heads).
- ``copy`` / ``reverse``: ``x1 … xn SEP`` then the same tokens (reversed for ``reverse``).
- ``mqar``: multi-query associative recall as Zoology (Arora et al. 2023) generates it: the
  pairs, then each key queried once at a power-law-distributed distance, filler in between,
  the answer (the value) as the query position's target.
- ``char``: character-level language modelling over a user-given text file (random windows).
"""

from __future__ import annotations

import dataclasses
import difflib
import pathlib
from typing import Any, NamedTuple

import numpy as np

from attnjax.functional._checks import as_bool, as_int, as_positive_float

__all__ = [
    "TASKS",
    "AssociativeRecall",
    "Batch",
    "CharLM",
    "Copy",
    "Induction",
    "ZoologyMQAR",
    "make_task",
]

PAD = 0


class Batch(NamedTuple):
    """One batch: ``inputs`` [B, T], ``targets`` [B, T] (int32) and ``loss_mask`` [B, T]."""

    inputs: np.ndarray
    targets: np.ndarray
    loss_mask: np.ndarray


def _rng(seed: int, step: int) -> np.random.Generator:
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return np.random.default_rng([int(seed), int(step)])


def _check_positive(**fields: Any) -> None:
    for name, value in fields.items():
        as_int(f"task.{name}", value, minimum=1)


def _to_batch(sequences: np.ndarray, answer: np.ndarray, seq_len: int) -> Batch:
    """Sequences [B, T+1] and answer flags [B, T+1] → inputs/targets/mask shifted by one."""
    return Batch(
        inputs=sequences[:, :seq_len].astype(np.int32),
        targets=sequences[:, 1 : seq_len + 1].astype(np.int32),
        loss_mask=answer[:, 1 : seq_len + 1].astype(np.float32),
    )


@dataclasses.dataclass(frozen=True)
class AssociativeRecall:
    """Multi-query associative recall (MQAR).

    Keys come from tokens ``[1, vocab_size // 2)``, values from ``[vocab_size // 2, vocab_size)``.
    ``num_pairs`` distinct keys with random values, then ``num_queries`` of those keys (distinct)
    each followed by its value. Needs ``2 * (num_pairs + num_queries) <= seq_len + 1``.
    """

    seq_len: int = 32
    vocab_size: int = 64
    num_pairs: int = 8
    num_queries: int = 4
    seed: int = 0
    name = "recall"

    def __post_init__(self):
        _check_positive(
            seq_len=self.seq_len,
            vocab_size=self.vocab_size,
            num_pairs=self.num_pairs,
            num_queries=self.num_queries,
        )
        if self.vocab_size < 6:
            raise ValueError(f"task.vocab_size={self.vocab_size} must be at least 6")
        num_keys = self.vocab_size // 2 - 1
        if self.num_pairs > num_keys:
            raise ValueError(
                f"task.num_pairs={self.num_pairs} exceeds the {num_keys} distinct keys that "
                f"task.vocab_size={self.vocab_size} provides (keys are tokens 1..vocab_size//2-1)"
            )
        if self.num_queries > self.num_pairs:
            raise ValueError(
                f"task.num_queries={self.num_queries} must be <= task.num_pairs={self.num_pairs}"
            )
        needed = 2 * (self.num_pairs + self.num_queries) - 1
        if needed > self.seq_len:
            raise ValueError(
                f"task.seq_len={self.seq_len} is too short for task.num_pairs={self.num_pairs} "
                f"and task.num_queries={self.num_queries}: needs seq_len >= {needed}"
            )

    def batch(self, step: int, batch_size: int) -> Batch:
        rng = _rng(self.seed, step)
        b, n, m = batch_size, self.num_pairs, self.num_queries
        half = self.vocab_size // 2
        keys = np.argsort(rng.random((b, half - 1)), axis=1)[:, :n] + 1  # distinct per row
        values = rng.integers(half, self.vocab_size, size=(b, n))
        which = np.argsort(rng.random((b, n)), axis=1)[:, :m]  # distinct queried pairs
        queries = np.take_along_axis(keys, which, axis=1)
        answers = np.take_along_axis(values, which, axis=1)
        seq = np.full((b, self.seq_len + 1), PAD, np.int64)
        answer = np.zeros_like(seq, dtype=bool)
        seq[:, 0 : 2 * n : 2], seq[:, 1 : 2 * n : 2] = keys, values
        start = 2 * n
        seq[:, start : start + 2 * m : 2] = queries
        seq[:, start + 1 : start + 2 * m : 2] = answers
        answer[:, start + 1 : start + 2 * m : 2] = True
        return _to_batch(seq, answer, self.seq_len)


@dataclasses.dataclass(frozen=True)
class Induction:
    """A random sequence of ``P`` tokens from ``[1, vocab_size)``, then the same ``P`` again.

    ``P`` is ``prefix_len``, or, with ``min_prefix_len`` set, drawn per sequence from
    ``[min_prefix_len, prefix_len]``: then the distance back to the answer varies, so no fixed
    positional rule solves the task and only an induction circuit (attend to the token after
    the previous occurrence of the current one, two layers) can. The loss counts the repeated
    half except its first token, so every row has ``P - 1`` answers: ``prefix_len`` and
    ``min_prefix_len`` must be at least 2. Needs ``2 * prefix_len <= seq_len + 1``.
    """

    seq_len: int = 32
    vocab_size: int = 64
    prefix_len: int = 16
    min_prefix_len: int | None = None
    seed: int = 0
    name = "induction"

    def __post_init__(self):
        _check_positive(
            seq_len=self.seq_len, vocab_size=self.vocab_size, prefix_len=self.prefix_len
        )
        if self.vocab_size < 3:
            raise ValueError(f"task.vocab_size={self.vocab_size} must be at least 3")
        if 2 * self.prefix_len > self.seq_len + 1:
            raise ValueError(
                f"task.prefix_len={self.prefix_len} does not fit task.seq_len={self.seq_len}: "
                f"needs seq_len >= {2 * self.prefix_len - 1}"
            )
        if self.min_prefix_len is not None:
            _check_positive(min_prefix_len=self.min_prefix_len)
        for name in ("prefix_len", "min_prefix_len"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise ValueError(
                    f"task.{name}={value} must be at least 2 (the repeat of a single token "
                    "leaves nothing to predict)"
                )
        if self.min_prefix_len is not None and self.min_prefix_len > self.prefix_len:
            raise ValueError(
                f"task.min_prefix_len={self.min_prefix_len} must be <= "
                f"task.prefix_len={self.prefix_len}"
            )

    def batch(self, step: int, batch_size: int) -> Batch:
        rng = _rng(self.seed, step)
        longest = self.prefix_len
        shortest = longest if self.min_prefix_len is None else self.min_prefix_len
        tokens = rng.integers(1, self.vocab_size, size=(batch_size, longest))
        lengths = rng.integers(shortest, longest + 1, size=(batch_size, 1))
        t = np.arange(self.seq_len + 1)[None]
        source = np.where(t < lengths, t, t - lengths)  # index into the prefix
        inside = t < 2 * lengths
        seq = np.where(inside, np.take_along_axis(tokens, np.minimum(source, longest - 1), 1), PAD)
        answer = (t > lengths) & inside
        return _to_batch(seq, answer, self.seq_len)


@dataclasses.dataclass(frozen=True)
class Copy:
    """``x1 … xn SEP`` then ``x1 … xn`` (or ``xn … x1`` with ``reverse``); SEP is token 1.

    Tokens come from ``[2, vocab_size)``. Needs ``2 * length + 1 <= seq_len + 1``.
    """

    seq_len: int = 32
    vocab_size: int = 64
    length: int = 12
    reverse: bool = False
    seed: int = 0

    @property
    def name(self) -> str:
        return "reverse" if self.reverse else "copy"

    def __post_init__(self):
        _check_positive(seq_len=self.seq_len, vocab_size=self.vocab_size, length=self.length)
        if self.vocab_size < 4:
            raise ValueError(f"task.vocab_size={self.vocab_size} must be at least 4")
        if 2 * self.length > self.seq_len:
            raise ValueError(
                f"task.length={self.length} does not fit task.seq_len={self.seq_len}: "
                f"needs seq_len >= {2 * self.length}"
            )

    def batch(self, step: int, batch_size: int) -> Batch:
        rng = _rng(self.seed, step)
        n = self.length
        tokens = rng.integers(2, self.vocab_size, size=(batch_size, n))
        seq = np.full((batch_size, self.seq_len + 1), PAD, np.int64)
        seq[:, :n], seq[:, n] = tokens, 1
        seq[:, n + 1 : 2 * n + 1] = tokens[:, ::-1] if self.reverse else tokens
        answer = np.zeros_like(seq, dtype=bool)
        answer[:, n + 1 : 2 * n + 1] = True
        return _to_batch(seq, answer, self.seq_len)


@dataclasses.dataclass(frozen=True)
class CharLM:
    """Character-level language modelling over a UTF-8 text file: random windows of it.

    The vocabulary is the file's distinct characters in sorted order, shifted by one (id 0 is
    padding, unused); ``vocab_size`` is ``len(chars) + 1``.
    """

    path: str
    seq_len: int = 64
    seed: int = 0
    name = "char"

    def __post_init__(self):
        _check_positive(seq_len=self.seq_len)
        if not self.path:
            raise ValueError("task.path must name a text file for the char task")
        file = pathlib.Path(self.path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"task.path={self.path!r} is not a readable file")
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(
                f"task.path={self.path!r} is not UTF-8 text (byte {error.start}: {error.reason})"
            ) from None
        if len(text) < self.seq_len + 1:
            raise ValueError(
                f"task.path={self.path!r} has {len(text)} characters, fewer than "
                f"task.seq_len + 1 = {self.seq_len + 1}"
            )
        chars = sorted(set(text))
        lookup = {c: i + 1 for i, c in enumerate(chars)}
        ids = np.fromiter((lookup[c] for c in text), np.int32, count=len(text))
        object.__setattr__(self, "chars", "".join(chars))
        object.__setattr__(self, "ids", ids)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> np.ndarray:
        """Text → ids [T] (characters the file lacks raise ``ValueError``)."""
        lookup = {c: i + 1 for i, c in enumerate(self.chars)}
        missing = sorted(set(text) - set(lookup))
        if missing:
            raise ValueError(f"characters not in the vocabulary: {missing!r}")
        return np.array([lookup[c] for c in text], np.int32)

    def decode(self, ids) -> str:
        """Ids [T] → text (padding dropped)."""
        return "".join(self.chars[i - 1] for i in np.asarray(ids).tolist() if i > 0)

    def batch(self, step: int, batch_size: int) -> Batch:
        rng = _rng(self.seed, step)
        starts = rng.integers(0, len(self.ids) - self.seq_len, size=(batch_size, 1))
        seq = self.ids[starts + np.arange(self.seq_len + 1)]
        return _to_batch(seq, np.ones_like(seq, dtype=bool), self.seq_len)


@dataclasses.dataclass(frozen=True)
class ZoologyMQAR:
    """Multi-query associative recall laid out as Zoology generates it (``"mqar"``).

    Arora, Eyuboglu et al. 2023, "Zoology: Measuring and Improving Recall in Efficient Language
    Models" (arXiv 2312.04927); the facts below are read from ``zoology/data/multiquery_ar.py``
    (``multiquery_ar``, HazyResearch/zoology at d88d6f5, ``num_passes=1``) and the settings of
    ``zoology/experiments/paper_configs/iclr24_zoology_figure2/configs.py``. The code is ours.

    Layout of a row (``C = 2 * num_pairs`` context tokens):

    - positions ``0 .. C-1``: ``k1 v1 k2 v2 ...``, ``num_pairs`` distinct keys drawn from
      ``[1, vocab_size // 2)`` and ``num_pairs`` distinct values from
      ``[vocab_size // 2, vocab_size)`` (distinct values too, as Zoology draws them);
    - every key is queried exactly once, so a row has ``num_pairs`` answers. Key ``i``'s query
      sits at ``C + 2 * g_i``: the gaps ``g_i`` are distinct slots of ``range(S)``,
      ``S = (seq_len - C) // 2``, drawn without replacement with weights
      ``power_a * (g + 1) ** (power_a - 1)`` (short gaps favoured for small ``power_a``;
      ``power_a = 1`` is uniform). Queries land on even offsets after the context, in an order
      unrelated to the pairs';
    - every other position is 0 (``random_non_queries=False``, the figure-2 setting), or with
      ``random_non_queries=True`` a uniform token from ``[0, vocab_size)`` (which may be a key
      or a value: Zoology's noise; it is never an answer position).

    Targets: Zoology returns ``inputs = x[:-1]`` and ``labels = y[1:]`` with the value written at
    ``y[C + 2g + 1]``, so its label at the query position ``C + 2g`` is the queried key's value;
    the value itself never follows the query in the inputs (that position is filler). Ours is
    the same under the ``inputs[:, t] -> targets[:, t]`` convention: ``loss_mask`` is 1 exactly
    at the query positions and ``targets`` there is the value (Zoology's labels, -100 elsewhere,
    become our mask). Elsewhere ``targets[:, t]`` is the next input token (masked out), so unlike
    the other tasks ``targets`` is not ``inputs`` shifted at the answers.

    Deliberate differences: Zoology trains on a fixed set (100,000 rows, 64 epochs in figure 2)
    drawn by ``np.random.seed``; this is an infinite stream, ``batch(step, batch_size)`` a pure
    function of ``(seed, step, batch_size)``, so the same ``seed`` does not reproduce their rows.
    Weighted sampling without replacement is done with Gumbel top-k, which draws the same
    distribution as NumPy's sequential ``choice(replace=False, p=...)``. Zoology's checks
    ``seq_len`` even and ``4 * num_pairs <= seq_len`` are kept; its ``vocab_size > seq_len``
    is not (nothing depends on it: the keys and values only need ``num_pairs`` distinct
    tokens each, checked), so small test vocabularies work.
    """

    seq_len: int = 64
    vocab_size: int = 8192
    num_pairs: int = 4
    power_a: float = 0.01
    random_non_queries: bool = False
    seed: int = 0
    name = "mqar"

    def __post_init__(self):
        _check_positive(seq_len=self.seq_len, vocab_size=self.vocab_size, num_pairs=self.num_pairs)
        as_positive_float("task.power_a", self.power_a)
        as_bool("task.random_non_queries", self.random_non_queries)
        if self.seq_len % 2:
            raise ValueError(f"task.seq_len={self.seq_len} must be even (Zoology's rule)")
        num_keys = self.vocab_size // 2 - 1
        if self.num_pairs > num_keys:
            raise ValueError(
                f"task.num_pairs={self.num_pairs} exceeds the {num_keys} distinct keys that "
                f"task.vocab_size={self.vocab_size} provides (keys are tokens 1..vocab_size//2-1)"
            )
        if 4 * self.num_pairs > self.seq_len:
            raise ValueError(
                f"task.seq_len={self.seq_len} is too short for task.num_pairs={self.num_pairs}: "
                f"the pairs and their queries need seq_len >= 4 * num_pairs = {4 * self.num_pairs}"
            )

    @property
    def gap_weights(self) -> np.ndarray:
        """The probability of each gap slot ``g`` in ``range(S)`` for one draw (sums to 1)."""
        slots = (self.seq_len - 2 * self.num_pairs) // 2
        weights = self.power_a * np.arange(1, slots + 1, dtype=np.float64) ** (self.power_a - 1)
        return weights / weights.sum()

    def batch(self, step: int, batch_size: int) -> Batch:
        rng = _rng(self.seed, step)
        b, n, t = batch_size, self.num_pairs, self.seq_len
        half, context = self.vocab_size // 2, 2 * self.num_pairs
        keys = _distinct(rng, b, n, half - 1) + 1
        values = _distinct(rng, b, n, self.vocab_size - half) + half
        log_p = np.log(self.gap_weights)
        gumbel = -np.log(-np.log(rng.random((b, log_p.size))))
        gaps = np.argpartition(-(log_p + gumbel), n - 1, axis=1)[:, :n]  # top n: distinct slots
        where = context + 2 * gaps  # [B, n] query positions
        seq = np.full((b, t + 1), PAD, np.int64)
        seq[:, 0:context:2], seq[:, 1:context:2] = keys, values
        np.put_along_axis(seq, where, keys, axis=1)
        if self.random_non_queries:
            noise = rng.integers(0, self.vocab_size, size=seq.shape)
            filler = np.ones(seq.shape, bool)
            filler[:, :context] = False
            np.put_along_axis(filler, where, False, axis=1)
            seq = np.where(filler, noise, seq)
        targets = seq[:, 1:].copy()
        np.put_along_axis(targets, where, values, axis=1)
        mask = np.zeros((b, t), np.float32)
        np.put_along_axis(mask, where, 1.0, axis=1)
        return Batch(seq[:, :t].astype(np.int32), targets.astype(np.int32), mask)


def _distinct(rng: np.random.Generator, rows: int, count: int, pool: int) -> np.ndarray:
    """[rows, count] distinct draws from ``range(pool)`` per row, uniform over ordered tuples.

    Few draws from a large pool (Zoology's 4 keys of 4095): draw with replacement and redraw
    the rows that repeat a token (rejection keeps the distribution exact; ``count**2 <= pool``
    keeps the redrawn share under about a half). Otherwise: the ``count`` smallest of ``pool``
    uniforms, in the order of their uniforms."""
    if count * count <= pool:
        out = rng.integers(0, pool, size=(rows, count))
        while True:
            ordered = np.sort(out, axis=1)
            repeats = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
            if not repeats.any():
                return out
            out[repeats] = rng.integers(0, pool, size=(int(repeats.sum()), count))
    u = rng.random((rows, pool))
    chosen = np.argsort(u, axis=1)[:, :count]
    return chosen


TASKS = {
    "recall": AssociativeRecall,
    "induction": Induction,
    "copy": Copy,
    "reverse": lambda **kw: Copy(reverse=True, **kw),
    "char": CharLM,
    "mqar": ZoologyMQAR,
}

_FIELDS = {
    "recall": AssociativeRecall,
    "induction": Induction,
    "copy": Copy,
    "reverse": Copy,
    "char": CharLM,
    "mqar": ZoologyMQAR,
}


def make_task(name: str, **params: Any):
    """The task called ``name`` (one of ``TASKS``) with its parameters, validated.

    Unknown parameters raise ``ValueError`` naming the field and the closest valid one.
    Example: ``make_task("recall", seq_len=32, vocab_size=64, num_pairs=8, num_queries=4)``.
    """
    if name not in TASKS:
        raise ValueError(f"task.name={name!r} is unknown; choose one of {sorted(TASKS)}")
    fields = [f.name for f in dataclasses.fields(_FIELDS[name]) if f.name != "reverse"]
    for key in params:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"task.{key} is not a parameter of the {name!r} task{hint}")
    return TASKS[name](**params)
