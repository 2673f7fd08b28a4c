"""Cross-attention: queries from x, keys and values from a context of its own length S."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attnjax.layers import MultiHeadAttention


def _flax_copy(ours: MultiHeadAttention, d: int, c: int, n: int, h: int):
    theirs = nnx.MultiHeadAttention(
        n, d, qkv_features=n * h, in_kv_features=c, decode=False, rngs=nnx.Rngs(2)
    )
    theirs.query.kernel[...] = ours.query[...]
    theirs.key.kernel[...] = ours.key[...]
    theirs.value.kernel[...] = ours.value_down[...]
    theirs.out.kernel[...] = ours.value_up[...]
    for name, flax_name in (("query", "query"), ("key", "key"), ("value", "value")):
        getattr(theirs, flax_name).bias[...] = getattr(ours, f"{name}_bias")[...]
    theirs.out.bias[...] = ours.output_bias[...]
    return theirs


def test_matches_flax_cross_attention_in_value_and_gradient(key):
    d, c, n, h, t, s = 16, 12, 4, 4, 5, 7
    ours = MultiHeadAttention(d, n, context_dim=c, use_bias=True, rngs=nnx.Rngs(1))
    for i, name in enumerate(("query_bias", "key_bias", "value_bias", "output_bias")):
        leaf = getattr(ours, name)
        leaf[...] = jax.random.normal(jax.random.fold_in(key, i), leaf.shape)
    theirs = _flax_copy(ours, d, c, n, h)
    kx, kc, km = jax.random.split(key, 3)
    x, context = jax.random.normal(kx, (2, t, d)), jax.random.normal(kc, (2, s, c))
    # The context's padding: the second sequence has only 4 real context positions.
    mask = (jnp.arange(s) < jnp.array([[s], [4]]))[:, None, None, :]
    expected = theirs(x, context, context, mask=mask, deterministic=True)
    got = ours(x, context=context, mask=mask)
    assert got.shape == (2, t, d)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)

    def loss(module, x, context, f):
        return jnp.sum(f(module, x, context) * jnp.cos(jnp.arange(d)))

    ours_grads = jax.grad(loss, argnums=(1, 2))(
        ours, x, context, lambda m, x, ctx: m(x, context=ctx, mask=mask)
    )
    theirs_grads = jax.grad(loss, argnums=(1, 2))(
        theirs, x, context, lambda m, x, ctx: m(x, ctx, ctx, mask=mask, deterministic=True)
    )
    for got_grad, expected_grad in zip(ours_grads, theirs_grads, strict=True):
        np.testing.assert_allclose(got_grad, expected_grad, atol=1e-5, rtol=1e-5)
    # Padded context positions get no gradient.
    assert float(jnp.abs(ours_grads[1][1, 4:]).max()) == 0.0


def test_grouped_query_cross_attention_against_numpy(key):
    d, c, n, k, h, t, s = 8, 6, 4, 2, 3, 3, 5
    mha = MultiHeadAttention(d, n, context_dim=c, num_kv_heads=k, head_dim=h, rngs=nnx.Rngs(0))
    kx, kc = jax.random.split(key)
    x, context = jax.random.normal(kx, (1, t, d)), jax.random.normal(kc, (1, s, c))
    y, pattern = mha(x, context=context, return_pattern=True)
    assert pattern.shape == (1, n, t, s)
    xs, cs = np.asarray(x, np.float64)[0], np.asarray(context, np.float64)[0]
    wq, wk = np.asarray(mha.query[...]), np.asarray(mha.key[...])
    wvd, wvu = np.asarray(mha.value_down[...]), np.asarray(mha.value_up[...])
    expected = np.zeros((t, d))
    for head in range(n):
        group = head // (n // k)
        scores = (xs @ wq[:, head]) @ (cs @ wk[:, group]).T / np.sqrt(h)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        np.testing.assert_allclose(pattern[0, head], weights, atol=1e-5)
        expected += weights @ (cs @ wvd[:, group] @ wvu[head])
    np.testing.assert_allclose(y[0], expected, atol=1e-5)


class _TinyEncoderDecoder(nnx.Module):
    """One encoder self-attention layer, one decoder layer (causal self + cross-attention)."""

    def __init__(self, d: int, n: int, rngs: nnx.Rngs):
        self.encoder = MultiHeadAttention(d, n, rngs=rngs)
        self.decoder_self = MultiHeadAttention(d, n, is_causal=True, rope=True, rngs=rngs)
        self.decoder_cross = MultiHeadAttention(d, n, num_kv_heads=1, rngs=rngs)

    def encode(self, source):
        return source + self.encoder(source)

    def decode(self, target, context):
        h = target + self.decoder_self(target)
        return h + self.decoder_cross(h, context=context)


def test_encoder_decoder_decodes_with_a_cross_cache_computed_once(key):
    d, n = 16, 4
    model = _TinyEncoderDecoder(d, n, nnx.Rngs(0))
    ks, kt = jax.random.split(key)
    source, target = jax.random.normal(ks, (2, 6, d)), jax.random.normal(kt, (2, 5, d))
    memory = model.encode(source)
    full = model.decode(target, memory)

    cross = model.decoder_cross.encode_context(memory)  # keys/values of the encoder, once
    assert cross.key.shape == (2, 6, 1, d // n) and int(cross.length) == 6
    self_cache = model.decoder_self.init_cache(2, 5)
    steps = []
    for t in range(5):
        token = target[:, t : t + 1]
        h, self_cache = model.decoder_self(token, cache=self_cache)
        h = token + h
        steps.append(h + model.decoder_cross(h, context=cross))
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5)

    # The decoder's loss trains the encoder through cross-attention.
    grads = nnx.grad(lambda m: jnp.sum(m.decode(target, m.encode(source)) ** 2))(model)
    assert float(jnp.abs(grads.encoder.query[...]).max()) > 0.0


def test_cross_attention_bad_inputs_are_named(key):
    mha = MultiHeadAttention(8, 2, context_dim=6, rngs=nnx.Rngs(0))
    x = jax.random.normal(key, (2, 3, 8))
    with pytest.raises(ValueError, match=r"context must have shape \[B, S, C=6\]"):
        mha(x, context=jnp.ones((2, 4, 8)))
    with pytest.raises(ValueError, match="context has batch size 1, x has batch size 2"):
        mha(x, context=jnp.ones((1, 4, 6)))
    with pytest.raises(ValueError, match="cache= and context= were both given"):
        mha(x, context=jnp.ones((2, 4, 6)), cache=mha.init_cache(2, 4))
    causal = MultiHeadAttention(8, 2, is_causal=True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="is_causal=False and rope=False"):
        causal(x, context=x)
    with pytest.raises(ValueError, match="context_dim must be a positive int"):
        MultiHeadAttention(8, 2, context_dim=0, rngs=nnx.Rngs(0))
