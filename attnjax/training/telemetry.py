"""Head telemetry during training: what the heads do, measured on a fixed probe batch.

Olsson et al. 2022 ("In-context Learning and Induction Heads", arXiv 2209.11895) saw induction
heads form in a sudden phase change, and the in-context-learning score fall with it. To see
that happen the loop runs a small probe every ``train.telemetry_every`` steps:

- The probe batch (``probe_batch``) is B sequences of n uniform random tokens repeated twice
  (``attnjax.analysis.repeated_random_tokens``), ``n = min(max_seq_len // 2, 32)``, fixed for
  the whole run (its own seed, not the training stream's).
- ``induction`` [L, N]: Olsson et al.'s prefix-matching score, the mean attention from each
  query t of the repeated half ``[n, 2n)`` to ``t - n + 1``, the token after the earlier
  occurrence of the token at t (``attnjax.analysis.induction_score_from_patterns``). An exact
  induction head scores 1; a head that attends uniformly scores ``mean_t 1 / (t + 1)``.
- ``previous_token`` [L, N]: the mean attention from each query t >= 1 to ``t - 1``
  (``attnjax.analysis.previous_token_score``).
- ``icl`` (scalar): the in-context-learning score, loss late in the context minus loss early
  in it (negative = the model uses its context). See ``make_probe`` for the exact positions.
  It reads as Olsson et al.'s on a language model trained on every token. A task whose loss
  skips the first half (``attnjax.data`` ``induction``: only the repeat is scored) never
  trains the early predictions, which grow confidently wrong: there the score falls for 1-
  and 2-layer models alike (-6.8 and -7.9 nats after the default sweep's 800 steps).

``make_probe`` returns a pure, un-jitted function of the parameters, so one probe serves a
single run (``jax.jit(probe)(params)``) and a stack of replicas
(``jax.jit(jax.vmap(probe))(stacked_params)``, every output gaining a leading replica axis).
``telemetry_scalars`` flattens one probe's output into the names logged to ``metrics.jsonl``
and TensorBoard; ``phase_change_step`` finds the step at which the best induction score first
crosses a threshold in those records.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Int

from attnjax.analysis.interventions import run_with_cache
from attnjax.analysis.scores import (
    induction_score_from_patterns,
    previous_token_score,
    repeated_random_tokens,
)
from attnjax.functional._checks import as_int
from attnjax.functional._types import ArrayT

__all__ = [
    "DEFAULT_PHASE_CHANGE_THRESHOLD",
    "DEFAULT_PROBE_BATCH",
    "DEFAULT_PROBE_SEED",
    "MAX_PROBE_HALF",
    "PROBE_KEYS",
    "check_probeable",
    "icl_windows",
    "make_probe",
    "phase_change_step",
    "probe_batch",
    "probe_half_length",
    "telemetry_scalars",
]

MAX_PROBE_HALF = 32  # n at most: longer sequences cost more and say no more
DEFAULT_PROBE_BATCH = 16
DEFAULT_PROBE_SEED = 20_220_924  # its own stream: never a training or held-out batch
# Measured on the default sweep's model (configs/sweep.py, n = 11, 800 steps): every head of a
# fresh model scores 0.061 (= mean 1/(t+1)); the planted induction head 0.96 (vocabulary 64).
# Trained, the 2-layer model's best head jumps from 0.063 (step 25) to 0.26 (step 75) and then
# stays at 0.26-0.30 (its four layer-0 heads share the job: 0.18-0.29 each); the 1-layer
# model's best head goes 0.063 -> 0.30 over the same steps and on to 0.55. 0.2, three times
# the random baseline, catches both jumps; 0.3 would miss the 2-layer model's.
DEFAULT_PHASE_CHANGE_THRESHOLD = 0.2
PROBE_KEYS = ("induction", "previous_token", "icl")


def probe_half_length(max_seq_len: int) -> int:
    """n, the length of the random half of the probe: ``min(max_seq_len // 2, 32)``."""
    return min(as_int("max_seq_len", max_seq_len, minimum=1) // 2, MAX_PROBE_HALF)


def check_probeable(model_config, field: str = "train.telemetry_every") -> None:
    """``ValueError`` naming ``field`` unless the probe can run on ``model_config``: a causal
    decoder with ``max_seq_len >= 4`` (n >= 2, so the repeated half has a token after an
    earlier occurrence that is not the first)."""
    if not model_config.is_causal:
        raise ValueError(
            f"{field} needs a causal decoder (induction and in-context-learning scores are "
            f"defined on next-token prediction), got architecture={model_config.architecture!r}; "
            f"set {field}=0"
        )
    if model_config.max_seq_len < 4:
        raise ValueError(
            f"{field} needs model.max_seq_len >= 4 (a probe of 2 random tokens repeated), got "
            f"model.max_seq_len={model_config.max_seq_len}; set {field}=0"
        )


def probe_batch(
    vocab_size: int, max_seq_len: int, *, seed: int = DEFAULT_PROBE_SEED, batch: int = 16
) -> Int[ArrayT, "B T"]:
    """The probe: ``batch`` sequences of n random tokens in ``[0, vocab_size)`` repeated
    twice, [B, 2n] with ``n = probe_half_length(max_seq_len)``; the same for the same seed."""
    n = probe_half_length(max_seq_len)
    if n < 2:
        raise ValueError(f"max_seq_len={max_seq_len} must be at least 4 for a probe")
    return repeated_random_tokens(vocab_size, n, as_int("batch", batch, minimum=1), seed)


def icl_windows(half: int) -> tuple[range, range]:
    """``(early, late)``: the prediction positions t (predicting token t + 1) the ICL score
    compares on a probe of ``half`` = n tokens repeated. ``k = max(1, n // 2)``; early = the
    first k predictions ``[0, k)`` (of first-half tokens, which nothing before predicts); late
    = the last k ``[2n-1-k, 2n-1)`` (of repeated tokens, all past the boundary at n)."""
    k = max(1, half // 2)
    return range(0, k), range(2 * half - 1 - k, 2 * half - 1)


def make_probe(
    eval_graphdef: nnx.GraphDef,
    rest: nnx.State,
    model_config,
    *,
    seed: int = DEFAULT_PROBE_SEED,
    batch: int = DEFAULT_PROBE_BATCH,
) -> Callable[[nnx.State], dict[str, jax.Array]]:
    """``probe(params) -> {"induction": [L, N], "previous_token": [L, N], "icl": []}``.

    ``eval_graphdef`` and ``rest`` are those of ``attnjax.training.init_model(config, seed)``
    (dropout off); ``params`` its ``nnx.State`` of ``nnx.Param`` at any step. The probe is pure
    and not jitted: ``jax.jit(probe)`` for one run, ``jax.jit(jax.vmap(probe))`` over a leading
    replica axis of ``params`` (outputs gain that axis). One forward pass on the fixed probe
    tokens [B, 2n] (``probe_batch(model_config.vocab_size, model_config.max_seq_len, seed=seed,
    batch=batch)``) gives the patterns (``run_with_cache`` capturing ``"pattern"``) and the
    logits.

    ``icl``: with ``ℓ[b, t] = -log softmax(logits[b, t])[tokens[b, t + 1]]`` (nats) and the
    windows of ``icl_windows(n)`` (``k = max(1, n // 2)``),
    ``icl = mean_{b, t in late} ℓ[b, t] - mean_{b, t in early} ℓ[b, t]``:
    loss on the last k tokens of the repeated half minus loss on tokens 1..k of the random
    half. Olsson et al.'s sign: negative when the model predicts better later in the context,
    about 0 without in-context learning, near ``-log V`` for perfect induction.

    ``ValueError`` naming ``train.telemetry_every`` for a model the probe cannot run on
    (``check_probeable``).
    """
    check_probeable(model_config)
    tokens = probe_batch(model_config.vocab_size, model_config.max_seq_len, seed=seed, batch=batch)
    half = tokens.shape[1] // 2
    early, late = icl_windows(half)
    targets = tokens[:, 1:]

    def probe(params: nnx.State) -> dict[str, jax.Array]:
        model = nnx.merge(eval_graphdef, params, rest)
        logits, cache = run_with_cache(model, tokens, ("pattern",))
        patterns = cache["pattern"]  # [L, B, N, T, T]
        logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
        loss = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # [B, T-1]
        icl = loss[:, late.start : late.stop].mean() - loss[:, early.start : early.stop].mean()
        return {
            "induction": induction_score_from_patterns(patterns, half),
            "previous_token": previous_token_score(patterns),
            "icl": icl,
        }

    return probe


def telemetry_scalars(out: Mapping[str, Any]) -> dict[str, float]:
    """One probe's output (``make_probe``; device or host arrays) as flat, loggable floats:
    ``telemetry/induction_max``, ``telemetry/previous_token_max`` (best head of each),
    ``telemetry/icl``, and per head ``telemetry/induction/L{l}H{n}`` and
    ``telemetry/previous_token/L{l}H{n}``. Fetches ``out`` from the device (blocks on it)."""
    host = jax.device_get(dict(out))
    scalars = {}
    for name in ("induction", "previous_token"):
        scores = np.asarray(host[name], np.float64)
        if scores.ndim != 2:
            raise ValueError(f"out[{name!r}] must have shape [L, N], got {scores.shape}")
        scalars[f"telemetry/{name}_max"] = float(scores.max())
    scalars["telemetry/icl"] = float(np.asarray(host["icl"]))
    for name in ("induction", "previous_token"):
        for (layer, head), value in np.ndenumerate(np.asarray(host[name], np.float64)):
            scalars[f"telemetry/{name}/L{layer}H{head}"] = float(value)
    return scalars


def phase_change_step(
    records: Iterable[Mapping[str, Any]],
    *,
    threshold: float = DEFAULT_PHASE_CHANGE_THRESHOLD,
    key: str = "telemetry/induction_max",
) -> int | None:
    """The first logged step whose ``key`` is at least ``threshold`` (``None`` if none is).

    ``records``: as ``attnjax.training.metrics.read_metrics`` returns them (``{"step": s,
    ...}``); records without ``key``, or with a non-finite value, are passed over. A score that
    crosses and dips back still changed phase at its first crossing.
    """
    threshold = float(threshold)
    crossed = [
        int(r["step"])
        for r in records
        if isinstance(r.get(key), int | float) and math.isfinite(r[key]) and r[key] >= threshold
    ]
    return min(crossed) if crossed else None
