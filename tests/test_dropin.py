"""attnjax.dot_product_attention as a true drop-in for jax.nn.dot_product_attention.

Each case reproduces a failure a peer test suite found (bfloat16 gradients under jit,
jax.debug_infs, rank promotion "raise", a traced scale, return_residual, zero-size inputs,
grids too big to hold), for every implementation that can run it on CPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attnjax
from attnjax.functional.backends import base

CPU_IMPLS = ["vmap", "einsum", "blocked", "xla"]


def _qkv(key, shape=(2, 8, 2, 8), kv_heads=None, dtype=jnp.float32):
    batch, length, heads, width = shape
    kv_shape = (batch, length, kv_heads or heads, width)
    kq, kk, kv = jax.random.split(key, 3)
    return (
        jax.random.normal(kq, shape, dtype),
        jax.random.normal(kk, kv_shape, dtype),
        jax.random.normal(kv, kv_shape, dtype),
    )


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_bfloat16_backward_under_jit(key, impl):
    """B >= 2 and K >= 2 once crashed XLA:CPU (BF16 x BF16 = F32 dots in the backward)."""
    q, k, v = _qkv(key, dtype=jnp.bfloat16)
    g = jax.random.normal(jax.random.fold_in(key, 1), q.shape, jnp.bfloat16)

    def grads(q, k, v, implementation):
        def attention(q, k, v):
            return attnjax.dot_product_attention(
                q, k, v, is_causal=True, implementation=implementation
            )

        return jax.vjp(attention, q, k, v)[1](g)

    got = jax.jit(grads, static_argnums=3)(q, k, v, impl)
    as_f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    want = jax.jit(
        lambda q, k, v: jax.vjp(
            lambda *a: jax.nn.dot_product_attention(*a, is_causal=True), q, k, v
        )[1](g.astype(jnp.float32))
    )(*as_f32)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(a, np.float32), b, atol=6e-2, rtol=6e-2)


def _masked_cases(key, q_len=8):
    return {
        "causal": dict(is_causal=True),
        "mask": dict(
            mask=jax.random.bernoulli(key, 0.7, (2, 1, q_len, q_len)).at[..., 0].set(True)
        ),
        "window": dict(local_window_size=(2, 1)),
        "lengths": dict(key_value_seq_lengths=jnp.array([5, 8]), is_causal=True),
    }


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize("case", ["causal", "mask", "window", "lengths"])
def test_masked_calls_run_under_debug_infs(key, impl, case):
    """jax#37422: masking must not create infinities (JAX's own regression test)."""
    q, k, v = _qkv(key)
    kwargs = _masked_cases(jax.random.fold_in(key, 2))[case]
    want = jax.nn.dot_product_attention(q, k, v, **kwargs)
    with jax.debug_infs(True):
        out = attnjax.dot_product_attention(q, k, v, implementation=impl, **kwargs)
        grad = jax.grad(
            lambda q: attnjax.dot_product_attention(q, k, v, implementation=impl, **kwargs).sum()
        )(q)
    np.testing.assert_allclose(out, want, atol=2e-5, rtol=2e-5)
    assert np.isfinite(np.asarray(grad)).all()


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_rank_promotion_raise(key, impl):
    """The JAX test suite runs with jax.numpy_rank_promotion("raise")."""
    q, k, v = _qkv(key)
    mask = jnp.ones((1, 1, 8, 8), bool)
    with jax.numpy_rank_promotion("raise"):
        out = attnjax.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation=impl)
        grad = jax.grad(
            lambda q: attnjax.dot_product_attention(
                q, k, v, mask=mask, is_causal=True, key_value_seq_lengths=jnp.array([6, 8]),
                implementation=impl,
            ).sum()
        )(q)  # fmt: skip
    np.testing.assert_allclose(
        out, jax.nn.dot_product_attention(q, k, v, is_causal=True), atol=2e-5
    )
    assert np.isfinite(np.asarray(grad)).all()


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_traced_scale_is_differentiable(key, impl):
    """A learned temperature: the scale is a traced value and gets a gradient."""
    q, k, v = _qkv(key)

    def loss(scale, fn, **kwargs):
        return (fn(q, k, v, scale=scale, is_causal=True, **kwargs) ** 2).sum()

    got = jax.grad(loss)(0.7, attnjax.dot_product_attention, implementation=impl)
    want = jax.grad(loss)(0.7, jax.nn.dot_product_attention)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    value = jax.jit(lambda s: loss(s, attnjax.dot_product_attention, implementation=impl))(0.7)
    np.testing.assert_allclose(value, loss(0.7, jax.nn.dot_product_attention), rtol=1e-5)


@pytest.mark.parametrize("impl", CPU_IMPLS)
def test_return_residual_is_jax_nns(key, impl):
    q, k, v = _qkv(key, kv_heads=1)
    kwargs = dict(is_causal=True, key_value_seq_lengths=jnp.array([6, 8]))
    out, residual = attnjax.dot_product_attention(
        q, k, v, implementation=impl, return_residual=True, **kwargs
    )
    want_out, want = jax.nn.dot_product_attention(q, k, v, return_residual=True, **kwargs)
    assert residual.shape == want.shape == q.shape[:3] and residual.dtype == want.dtype
    np.testing.assert_allclose(residual, want, atol=1e-5)
    np.testing.assert_allclose(out, want_out, atol=2e-5)
    # Under stop_gradient, as in jax.nn: nothing flows back through the residual.
    grad = jax.grad(
        lambda q: attnjax.dot_product_attention(
            q, k, v, implementation=impl, return_residual=True, **kwargs
        )[1].sum()
    )(q)
    assert float(jnp.abs(grad).max()) == 0.0


@pytest.mark.parametrize("impl", CPU_IMPLS)
@pytest.mark.parametrize(
    ("q_shape", "k_len"), [((2, 0, 2, 8), 8), ((2, 8, 2, 8), 0), ((0, 8, 2, 8), 8)]
)
def test_zero_size_inputs(key, impl, q_shape, k_len):
    q = jax.random.normal(key, q_shape)
    k = v = jax.random.normal(key, (q_shape[0], k_len, 2, 8))
    out = attnjax.dot_product_attention(q, k, v, is_causal=True, implementation=impl)
    assert out.shape == q_shape and not jnp.any(out)
    if q_shape[1] == 0:  # jax.nn handles T = 0; it gives the same
        np.testing.assert_array_equal(out, jax.nn.dot_product_attention(q, k, v, is_causal=True))
    grad = jax.grad(lambda q: attnjax.dot_product_attention(q, k, v, implementation=impl).sum())(q)
    assert grad.shape == q_shape and not jnp.any(grad)


@pytest.mark.parametrize("impl", ["vmap", "einsum", "xla"])
def test_a_grid_too_big_to_hold_is_refused_with_its_size(impl):
    q = jax.ShapeDtypeStruct((1, 65536, 2, 8), jnp.float32)
    with pytest.raises(ValueError, match=r"grid takes 32\.0 GiB .*'blocked' never builds it"):
        jax.eval_shape(lambda q: attnjax.dot_product_attention(q, q, q, implementation=impl), q)
    with pytest.raises(ValueError, match="grid takes 32.0 GiB"):
        jax.eval_shape(lambda q: attnjax.dot_product_attention(q, q, q, return_pattern=True), q)
    assert base.MAX_GRID_BYTES == 8 * 2**30
