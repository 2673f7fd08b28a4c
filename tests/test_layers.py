"""MultiHeadAttention, MLP and norms: against Flax's own module, causality, KV cache."""

import math

import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest
from flax import nnx

from attnjax import functional as F
from attnjax.layers import ACTIVATIONS, MLP, MultiHeadAttention, make_norm
from attnjax.layers._checks import error_if, trusted_inputs
from attnjax.layers.mlp import gelu


def test_matches_flax_multi_head_attention_with_copied_weights(key):
    d, n, h = 16, 4, 4
    ours = MultiHeadAttention(d, n, use_bias=True, rngs=nnx.Rngs(1))
    theirs = nnx.MultiHeadAttention(n, d, qkv_features=n * h, decode=False, rngs=nnx.Rngs(2))
    # Give ours non-zero biases, then copy every weight into Flax's module.
    for name in ("query_bias", "key_bias", "value_bias", "output_bias"):
        leaf = getattr(ours, name)
        leaf[...] = jax.random.normal(jax.random.fold_in(key, len(name)), leaf.shape)
    theirs.query.kernel[...] = ours.query[...]
    theirs.query.bias[...] = ours.query_bias[...]
    theirs.key.kernel[...] = ours.key[...]
    theirs.key.bias[...] = ours.key_bias[...]
    theirs.value.kernel[...] = ours.value_down[...]
    theirs.value.bias[...] = ours.value_bias[...]
    theirs.out.kernel[...] = ours.value_up[...]
    theirs.out.bias[...] = ours.output_bias[...]
    x = jax.random.normal(key, (2, 6, d))
    causal = nnx.make_causal_mask(jnp.ones((2, 6))).astype(bool)
    expected = theirs(x, mask=causal, deterministic=True)
    got = ours(x, mask=causal)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    ours.is_causal = True
    np.testing.assert_allclose(ours(x), expected, atol=1e-5, rtol=1e-5)


def test_grouped_query_value_rank_and_patterns(key):
    mha = MultiHeadAttention(16, 4, num_kv_heads=2, head_dim=6, value_dim=3, rngs=nnx.Rngs(0))
    assert mha.query.shape == (16, 4, 6) and mha.key.shape == (16, 2, 6)
    assert mha.value_down.shape == (16, 2, 3) and mha.value_up.shape == (4, 3, 16)
    x = jax.random.normal(key, (2, 5, 16))
    y, pattern = mha(x, return_pattern=True)
    assert y.shape == (2, 5, 16) and pattern.shape == (2, 4, 5, 5)
    np.testing.assert_allclose(pattern.sum(-1), 1.0, atol=1e-5)
    # Recompute by hand: per head, softmax(x W_Q (x W_K)ᵀ / sqrt(H)) x W_V↓ W_V↑, summed over heads.
    xs = np.asarray(x, np.float64)
    wq, wk = np.asarray(mha.query[...]), np.asarray(mha.key[...])
    wvd, wvu = np.asarray(mha.value_down[...]), np.asarray(mha.value_up[...])
    expected = np.zeros((2, 5, 16))
    for n in range(4):
        kv = n // 2
        scores = np.einsum("btd,dh,bse,eh->bts", xs, wq[:, n], xs, wk[:, kv]) / np.sqrt(6)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        np.testing.assert_allclose(pattern[:, n], weights, atol=1e-5)
        expected += weights @ (xs @ wvd[:, kv] @ wvu[n])
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_causal_layer_has_no_gradient_from_the_future(key):
    mha = MultiHeadAttention(16, 4, is_causal=True, rope=True, rngs=nnx.Rngs(0))
    x = jax.random.normal(key, (1, 7, 16))
    t = 2
    grad = jax.grad(lambda x: mha(x)[:, t].sum())(x)
    assert float(jnp.abs(grad[:, t + 1 :]).max()) == 0.0
    assert float(jnp.abs(grad[:, : t + 1]).max()) > 0.0


@pytest.mark.parametrize("rope", [False, True])
def test_kv_cache_prefill_then_single_tokens_equals_full_pass(key, rope):
    mha = MultiHeadAttention(16, 4, num_kv_heads=2, is_causal=True, rope=rope, rngs=nnx.Rngs(0))
    x = jax.random.normal(key, (2, 7, 16))
    full = mha(x)
    cache = mha.init_cache(2, 10)
    assert cache.key.shape == (2, 10, 2, 4)  # sized by num_kv_heads
    outputs = []
    y, cache = mha(x[:, :4], cache=cache)  # prefill a 4-token prompt
    outputs.append(y)
    for t in range(4, 7):
        y, cache = mha(x[:, t : t + 1], cache=cache)
        outputs.append(y)
    assert int(cache.length) == 7
    np.testing.assert_allclose(jnp.concatenate(outputs, axis=1), full, atol=1e-5)


def test_cache_overflow_and_bad_arguments_are_named():
    mha = MultiHeadAttention(8, 2, is_causal=True, rngs=nnx.Rngs(0))
    cache = mha.init_cache(1, 3)
    with pytest.raises(ValueError, match="cache overflow"):
        mha(jnp.ones((1, 4, 8)), cache=cache)
    with pytest.raises(ValueError, match="num_kv_heads=3 must divide num_heads=4"):
        MultiHeadAttention(8, 4, num_kv_heads=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_heads=3 must divide model_dim=8"):
        MultiHeadAttention(8, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="rope=True needs an even head_dim"):
        MultiHeadAttention(8, 2, head_dim=3, rope=True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="implementation='fast' is unknown"):
        MultiHeadAttention(8, 2, implementation="fast", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        MultiHeadAttention(8, 0, rngs=nnx.Rngs(0))


def test_pattern_dropout_only_in_training(key):
    mha = MultiHeadAttention(16, 4, dropout_rate=0.5, rngs=nnx.Rngs(0, dropout=1))
    x = jax.random.normal(key, (1, 5, 16))
    train_a, train_b = mha(x), mha(x)
    assert not np.allclose(train_a, train_b)  # fresh dropout keys each call
    mha.eval()
    np.testing.assert_array_equal(mha(x), mha(x))
    mha.train()
    assert mha.deterministic is False


def test_mlp_and_norms_match_numpy(key):
    mlp = MLP(8, 32, activation="relu", rngs=nnx.Rngs(0))
    x = jax.random.normal(key, (2, 3, 8))
    up, down = mlp.up.kernel[...], mlp.down.kernel[...]
    expected = np.maximum(np.asarray(x) @ up + mlp.up.bias[...], 0) @ down + mlp.down.bias[...]
    np.testing.assert_allclose(mlp(x), expected, atol=1e-5)
    rms = make_norm("rmsnorm", 8, eps=1e-6, rngs=nnx.Rngs(0))
    xs = np.asarray(x)
    np.testing.assert_allclose(
        rms(x), xs / np.sqrt((xs**2).mean(-1, keepdims=True) + 1e-6), atol=1e-5
    )
    with pytest.raises(ValueError, match="norm='batchnorm' is unknown"):
        make_norm("batchnorm", 8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="activation='tanh' is unknown"):
        MLP(8, 16, activation="tanh", rngs=nnx.Rngs(0))


def test_gelu_is_exact_gelu_in_value_and_gradient(key):
    """The erf form of exact GELU agrees with float64 x·Φ(x) and with jax.nn.gelu."""
    x = jnp.concatenate([jax.random.normal(key, (1000,)) * 4, jnp.array([-30.0, -9.0, 0.0, 9.0])])
    xs = np.asarray(x, np.float64)
    cdf = 0.5 * (1 + np.vectorize(math.erf)(xs / math.sqrt(2)))
    pdf = np.exp(-0.5 * xs**2) / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(gelu(x), xs * cdf, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(jax.grad(gelu))(x), cdf + xs * pdf, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gelu(x), jax.nn.gelu(x, approximate=False), rtol=1e-6, atol=1e-6)
    assert ACTIVATIONS["gelu"] is gelu


def test_layer_output_matches_functional_reference(key):
    """The module is only parameters around attnjax.functional."""
    mha = MultiHeadAttention(12, 3, rngs=nnx.Rngs(3))
    x = jax.random.normal(key, (2, 4, 12))
    q, k, v = mha.project(x, jnp.arange(4)[None])
    out = F.dot_product_attention(q, k, v, implementation="vmap")
    np.testing.assert_allclose(
        mha(x), jnp.einsum("BTNR,NRD->BTD", out, mha.value_up[...]), atol=1e-5
    )


def test_error_if_raises_eagerly_under_jit_grad_and_vmap(key):
    def checked(x):
        error_if(x > 2.0, lambda top: f"x must be <= 2, got {np.max(top):.1f}", jnp.max(x))
        return jnp.sum(jnp.sin(x))

    x = jax.random.uniform(key, (3,))  # in [0, 1): passes
    with pytest.raises(ValueError, match="x must be <= 2, got 5.0"):
        checked(x.at[1].set(5.0))
    np.testing.assert_allclose(jax.jit(jax.grad(checked))(x), jnp.cos(x), atol=1e-6)
    for transform in (jax.jit, lambda f: jax.jit(jax.grad(f))):
        with pytest.raises(jax.errors.JaxRuntimeError, match="x must be <= 2, got 5.0"):
            jax.block_until_ready(transform(checked)(x.at[1].set(5.0)))
    # Under vmap the cond runs both branches: a passing batch must not raise.
    rows = jax.random.uniform(key, (4, 3))
    np.testing.assert_allclose(jax.jit(jax.vmap(checked))(rows), jnp.sin(rows).sum(1), atol=1e-6)
    with pytest.raises(jax.errors.JaxRuntimeError, match="got 5.0"):
        jax.block_until_ready(jax.jit(jax.vmap(checked))(rows.at[2, 0].set(5.0)))


def test_positions_shape_is_checked(key, monkeypatch):
    mha = MultiHeadAttention(16, 4, rope=True, rngs=nnx.Rngs(0))
    x = jax.random.normal(key, (2, 3, 16))
    # Under pytest jaxtyping may reject a mismatched T first (a TypeError naming it).
    with pytest.raises((ValueError, TypeError), match="positions"):
        mha(x, positions=jnp.arange(4)[None])
    monkeypatch.setattr(jaxtyping.config, "jaxtyping_disable", True)  # as a user runs it
    for bad in (jnp.arange(4)[None], jnp.arange(3), jnp.zeros((3, 3), int)):
        with pytest.raises(ValueError, match=r"positions must have shape \[B=2, T=3\]"):
            mha(x, positions=bad)
    np.testing.assert_allclose(mha(x, positions=jnp.arange(3)[None]), mha(x), atol=1e-6)


def test_sizes_reject_bools_and_rope_base_must_be_positive():
    with pytest.raises(ValueError, match="num_heads must be a positive int, got True"):
        MultiHeadAttention(16, True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="head_dim must be a positive int, got True"):
        MultiHeadAttention(16, 2, head_dim=True, rngs=nnx.Rngs(0))
    for base in (0.0, -10.0, float("nan")):
        with pytest.raises(ValueError, match="rope_base must be a positive finite number"):
            MultiHeadAttention(16, 2, rope=True, rope_base=base, rngs=nnx.Rngs(0))


def test_cache_batch_size_and_overflow_under_jit(key):
    mha = MultiHeadAttention(16, 4, num_kv_heads=2, is_causal=True, rope=True, rngs=nnx.Rngs(0))
    x = jax.random.normal(key, (1, 5, 16))
    with pytest.raises(
        ValueError, match="cache holds batch_size=1 sequences, the input has batch size 2"
    ):
        mha(jnp.concatenate([x, x])[:, :2], cache=mha.init_cache(1, 4))
    _, cache = mha(x[:, :3], cache=mha.init_cache(1, 4))
    step = nnx.jit(lambda mha, x, cache: mha(x, cache=cache))
    y, full = step(mha, x[:, 3:4], cache)  # the last free slot: fine
    assert int(full.length) == 4 and bool(jnp.all(jnp.isfinite(y)))
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"cache overflow: 4 cached \+ 1 new"):
        jax.block_until_ready(step(mha, x[:, 4:5], full))


def test_trusted_inputs_compiles_traced_checks_away_but_checks_concrete_values(key):
    def checked(x):
        error_if(x > 2.0, lambda: "x must be <= 2")
        return 2.0 * x

    def trusted(x):
        with trusted_inputs():
            return checked(x)

    x = jax.random.uniform(key, (3,)).at[0].set(5.0)
    assert "callback" in jax.jit(checked).lower(x).as_text()
    assert "callback" not in jax.jit(trusted).lower(x).as_text()
    np.testing.assert_allclose(jax.jit(trusted)(x), 2.0 * x)
    with pytest.raises(ValueError, match="x must be <= 2"):
        trusted(x)  # eager: the values are concrete, so they are still checked
