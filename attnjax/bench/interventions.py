"""Ablation grid: ``ablation_scan`` (one compiled, vmapped program) against a Python loop of
L·N ablated forward calls of the same model (one jitted forward, an ablation array per call),
timed in turn in the same run. Both give the same [L, N] grid (checked before timing)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attnjax.analysis import ablation_scan
from attnjax.bench import timing
from attnjax.layers import Interventions
from attnjax.models import DecoderLM, ModelConfig

__all__ = ["ABLATION_SETTINGS", "ablation_rows"]

# name -> (layers, heads, model width, sequence length, batch)
ABLATION_SETTINGS = {"tiny": (2, 2, 16, 8, 2), "l4_n8_d128_t64_b8": (4, 8, 128, 64, 8)}


def _setting(name: str):
    layers, heads, width, length, batch = ABLATION_SETTINGS[name]
    config = ModelConfig(
        vocab_size=256, max_seq_len=length, model_dim=width, num_layers=layers, num_heads=heads
    )
    model = DecoderLM(config, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (batch, length), 0, config.vocab_size)
    return model, tokens


def _loss(tokens):
    def metric(logits):
        logp = jax.nn.log_softmax(logits[:, :-1])
        return -jnp.take_along_axis(logp, tokens[:, 1:, None], -1).mean()

    return metric


def ablation_rows(settings, repeats: int, chunk_size: int = 16) -> list[dict]:
    """One row per setting: median seconds of the scan and of the loop, and their ratio."""
    return [_row(name, repeats, chunk_size) for name in settings]


def _row(name: str, repeats: int, chunk_size: int) -> dict:
    model, tokens = _setting(name)
    layers, heads = model.config.num_layers, model.config.num_heads
    metric = _loss(tokens)
    graphdef, state = nnx.split(model)

    @jax.jit
    def ablated(state, scale):
        edits = Interventions(head_scale=scale)
        return metric(nnx.merge(graphdef, state)(tokens, interventions=edits))

    ones = jnp.ones((layers, heads))
    scales = [ones.at[i // heads, i % heads].set(0.0) for i in range(layers * heads)]

    def scan():
        return jax.block_until_ready(ablation_scan(model, tokens, metric, chunk_size=chunk_size))

    def loop():
        clean = ablated(state, ones)
        effects = [float(ablated(state, scale) - clean) for scale in scales]
        return np.array(effects).reshape(layers, heads)

    np.testing.assert_allclose(np.asarray(scan()), loop(), atol=1e-4)  # also compiles both
    samples = timing.interleaved_samples(
        [timing.Contender("scan", scan), timing.Contender("loop", loop)], repeats
    )
    scan_s, loop_s = (s.summary()["seconds"] for s in samples)
    print(
        f"{name:>20}  L·N={layers * heads:3d}  scan {scan_s * 1e3:9.1f} ms  "
        f"loop {loop_s * 1e3:9.1f} ms  loop/scan {loop_s / scan_s:5.2f}x",
        flush=True,
    )
    return dict(
        setting=name, layers=layers, heads=heads, chunk_size=chunk_size,
        scan_s=scan_s, loop_s=loop_s, loop_over_scan=loop_s / scan_s,
    )  # fmt: skip
