"""attnjax.functional against jax.nn.dot_product_attention and a float64 NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import attnjax
from attnjax import functional as F
from attnjax.functional.backends import jax_nn as jax_nn_backends
from tests.reference import numpy_attention

IMPLS = ["vmap", "einsum", "blocked", "xla"]


def qkv(
    key,
    batch=2,
    q_len=5,
    k_len=7,
    heads=4,
    kv_heads=2,
    width=8,
    value_width=None,
    dtype=jnp.float32,
):
    kq, kk, kv = jax.random.split(key, 3)
    value_width = width if value_width is None else value_width
    return (
        jax.random.normal(kq, (batch, q_len, heads, width), dtype),
        jax.random.normal(kk, (batch, k_len, kv_heads, width), dtype),
        jax.random.normal(kv, (batch, k_len, kv_heads, value_width), dtype),
    )


def random_mask(key, shape, density=0.7):
    return jax.random.bernoulli(key, density, shape)


# ---- single-head functions -----------------------------------------------------------------


def test_single_head_functions_match_the_explanation(key):
    kq, kk, kv = jax.random.split(key, 3)
    q, k = jax.random.normal(kq, (4, 6)), jax.random.normal(kk, (5, 6))
    v = jax.random.normal(kv, (5, 3))
    scores = F.attention_scores(q, k, 0.5)
    np.testing.assert_allclose(scores, np.asarray(q) @ np.asarray(k).T * 0.5, rtol=1e-5)
    mask = jnp.array([[True] * 5, [True, False, True, False, True], [False] * 5, [True] * 5])
    pattern = F.attention_pattern(scores, mask)
    assert pattern.dtype == jnp.float32
    np.testing.assert_allclose(pattern.sum(-1), [1, 1, 0, 1], atol=1e-6)
    assert float(jnp.abs(pattern * ~mask).max()) == 0.0
    out = F.attend(pattern, v)
    np.testing.assert_allclose(out, np.asarray(pattern) @ np.asarray(v), rtol=1e-5, atol=1e-6)


def test_pattern_is_float32_for_bfloat16_inputs(key):
    q, k, v = qkv(key, dtype=jnp.bfloat16)
    out, pattern = attnjax.dot_product_attention(q, k, v, return_pattern=True)
    assert pattern.dtype == jnp.float32 and out.dtype == jnp.bfloat16
    scores = F.attention_scores(q[0, :, 0], k[0, :, 0])
    assert F.attention_pattern(scores).dtype == jnp.float32


# ---- implementations against references ----------------------------------------------------

CASES = {
    "mha": dict(heads=4, kv_heads=4),
    "gqa": dict(heads=4, kv_heads=2),
    "mqa": dict(heads=4, kv_heads=1),
    "self_square": dict(q_len=6, k_len=6),
    "single_query": dict(q_len=1, k_len=9),
}


COMBOS = [
    ("mha", "none"),
    ("gqa", "causal"),
    ("mqa", "mask"),
    ("self_square", "window"),
    ("single_query", "lengths"),
    ("gqa", "lengths"),
    ("mha", "window"),
    ("mqa", "causal"),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("case", "masking"), COMBOS)
def test_matches_jax_nn_and_numpy(key, impl, case, masking):
    q, k, v = qkv(key, **CASES[case])
    batch, q_len, heads, _ = q.shape
    k_len = k.shape[1]
    kwargs, np_mask = {}, np.ones((batch, heads, q_len, k_len), bool)
    if masking == "causal":
        kwargs["is_causal"] = True
        np_mask &= np.tril(np.ones((q_len, k_len), bool))
    elif masking == "mask":
        kwargs["mask"] = random_mask(jax.random.fold_in(key, 1), (batch, 1, q_len, k_len))
        np_mask &= np.asarray(kwargs["mask"])
    elif masking == "window":
        kwargs["local_window_size"] = (2, 1)
        t, s = np.arange(q_len)[:, None], np.arange(k_len)[None]
        np_mask &= (s >= t - 2) & (s <= t + 1)
    elif masking == "lengths":
        lengths = jnp.array([k_len, max(1, k_len - 3)], jnp.int32)
        kwargs["key_value_seq_lengths"] = lengths
        np_mask &= np.arange(k_len)[None, None, None] < np.asarray(lengths)[:, None, None, None]
    out = attnjax.dot_product_attention(q, k, v, implementation=impl, **kwargs)
    expected, _ = numpy_attention(q, k, v, mask=np_mask)
    np.testing.assert_allclose(out, expected, atol=2e-5, rtol=2e-5)
    rows_all_valid = np_mask.any(-1).all()
    if rows_all_valid:  # jax.nn defines fully masked rows differently (uniform), skip those
        reference = jax.nn.dot_product_attention(q, k, v, **kwargs)
        np.testing.assert_allclose(out, reference, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("impl", ["vmap", "einsum"])
def test_value_width_may_differ_from_query_width(key, impl):
    q, k, v = qkv(key, value_width=3)
    bias = jax.random.normal(jax.random.fold_in(key, 2), (1, 4, 5, 7))
    out, pattern = attnjax.dot_product_attention(
        q, k, v, bias, is_causal=True, implementation=impl, return_pattern=True
    )
    assert out.shape == (2, 5, 4, 3)
    causal = np.tril(np.ones((5, 7), bool))
    expected, expected_pattern = numpy_attention(q, k, v, mask=causal, bias=bias)
    np.testing.assert_allclose(out, expected, atol=2e-5, rtol=2e-5)
    np.testing.assert_allclose(pattern, expected_pattern, atol=2e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_bias_and_mask_and_scale(key, impl):
    q, k, v = qkv(key)
    bias = jax.random.normal(jax.random.fold_in(key, 3), (2, 4, 5, 7))
    mask = random_mask(jax.random.fold_in(key, 4), (2, 4, 5, 7), 0.8)
    out = attnjax.dot_product_attention(q, k, v, bias, mask, scale=0.3, implementation=impl)
    expected, _ = numpy_attention(q, k, v, mask=mask, bias=bias, scale=0.3)
    np.testing.assert_allclose(out, expected, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_bfloat16_close_to_float64(key, impl):
    q, k, v = qkv(key, dtype=jnp.bfloat16)
    out = attnjax.dot_product_attention(q, k, v, is_causal=True, implementation=impl)
    assert out.dtype == jnp.bfloat16
    expected, _ = numpy_attention(q, k, v, mask=np.tril(np.ones((5, 7), bool)))
    np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=3e-2, rtol=3e-2)


def test_unbatched_inputs_like_jax_nn(key):
    q, k, v = qkv(key)
    out = attnjax.dot_product_attention(q[0], k[0], v[0], is_causal=True)
    np.testing.assert_allclose(
        out, jax.nn.dot_product_attention(q[0], k[0], v[0], is_causal=True), atol=2e-6
    )


def test_segment_and_padding_masks_combine(key):
    q, k, v = qkv(key, q_len=6, k_len=6)
    segments = jnp.array([[1, 1, 1, 2, 2, 2], [1, 1, 2, 2, 2, 3]])
    mask = F.combine_masks(
        F.segment_mask(segments), F.causal_mask(6), F.padding_mask(jnp.array([6, 5]), 6)
    )
    assert mask.shape == (2, 1, 6, 6)
    out = attnjax.dot_product_attention(q, k, v, mask=mask)
    seg = np.asarray(segments)
    np_mask = (seg[:, :, None] == seg[:, None, :]) & np.tril(np.ones((6, 6), bool))
    np_mask &= np.arange(6)[None, None] < np.array([6, 5])[:, None, None]
    expected, _ = numpy_attention(q, k, v, mask=np_mask[:, None])
    np.testing.assert_allclose(out, expected, atol=2e-5)
    # Row 5 of the second sequence is segment 3 whose only key is padding: zeros.
    assert float(jnp.abs(out[1, 5]).max()) == 0.0


def test_mask_helpers_follow_their_definitions():
    window = np.asarray(F.sliding_window_mask(6, 6, (2, 0)))[0, 0]
    t, s = np.arange(6)[:, None], np.arange(6)[None]
    np.testing.assert_array_equal(window, (s <= t) & (s >= t - 2))
    offset = np.asarray(F.causal_mask(2, 5, offset=3))[0, 0]
    np.testing.assert_array_equal(offset, [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    assert F.combine_masks(None, None) is None
    q_pad = np.asarray(
        F.padding_mask(jnp.array([2]), 3, query_lengths=jnp.array([1]), query_length=2)
    )
    np.testing.assert_array_equal(q_pad[0, 0], [[1, 1, 0], [0, 0, 0]])


# ---- gradients -------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_match_numerical_and_reference(key, impl):
    q, k, v = qkv(key, batch=1, q_len=3, k_len=4, heads=2, kv_heads=1, width=4)
    mask = jnp.array([[True, True, False, True]])[None, None]

    def f(q, k, v):
        return attnjax.dot_product_attention(
            q, k, v, mask=mask, is_causal=True, implementation=impl
        )

    check_grads(f, (q, k, v), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
    loss = lambda fn: lambda *a: (fn(*a) ** 2).sum()  # noqa: E731
    reference = lambda q, k, v: F.dot_product_attention(  # noqa: E731
        q, k, v, mask=mask, is_causal=True, implementation="vmap"
    )
    for got, want in zip(
        jax.grad(loss(f), (0, 1, 2))(q, k, v), jax.grad(loss(reference), (0, 1, 2))(q, k, v)
    ):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_fully_masked_rows_are_zero_with_zero_finite_gradients(key, impl):
    q, k, v = qkv(key)
    mask = jnp.ones((2, 1, 5, 7), bool).at[0, :, 2].set(False).at[1, :, 4].set(False)
    out = attnjax.dot_product_attention(q, k, v, mask=mask, implementation=impl)
    assert bool(jnp.isfinite(out).all())
    assert float(jnp.abs(out[0, 2]).max()) == 0.0 and float(jnp.abs(out[1, 4]).max()) == 0.0

    def loss(q, k, v):
        return (attnjax.dot_product_attention(q, k, v, mask=mask, implementation=impl) ** 2).sum()

    dq, dk, dv = jax.grad(loss, (0, 1, 2))(q, k, v)
    assert all(bool(jnp.isfinite(g).all()) for g in (dq, dk, dv))
    assert float(jnp.abs(dq[0, 2]).max()) == 0.0 and float(jnp.abs(dq[1, 4]).max()) == 0.0
    # -inf bias masks exactly like a boolean mask.
    bias = jnp.where(mask, 0.0, -jnp.inf)
    via_bias = attnjax.dot_product_attention(q, k, v, bias, implementation=impl)
    np.testing.assert_allclose(via_bias, out, atol=1e-6)


def test_all_masked_everywhere_is_zero_not_nan(key):
    q, k, v = qkv(key)
    mask = jnp.zeros((1, 1, 5, 7), bool)
    for impl in IMPLS:
        out = attnjax.dot_product_attention(q, k, v, mask=mask, implementation=impl)
        assert float(jnp.abs(out).max()) == 0.0


@pytest.mark.parametrize("impl", IMPLS)
def test_causality_through_gradients(key, impl):
    q, k, v = qkv(key, q_len=6, k_len=6)
    t = 3

    def row_t(k, v):
        out = attnjax.dot_product_attention(q, k, v, is_causal=True, implementation=impl)
        return out[:, t].sum()

    dk, dv = jax.grad(row_t, (0, 1))(k, v)
    assert float(jnp.abs(dk[:, t + 1 :]).max()) == 0.0
    assert float(jnp.abs(dv[:, t + 1 :]).max()) == 0.0
    assert float(jnp.abs(dk[:, : t + 1]).max()) > 0.0


def test_dropout_is_seeded_and_unbiased(key):
    q, k, v = qkv(key)
    rng = jax.random.key(7)
    kwargs = dict(dropout_rate=0.5, dropout_rng=rng, implementation="einsum")
    a = attnjax.dot_product_attention(q, k, v, **kwargs)
    b = attnjax.dot_product_attention(q, k, v, **kwargs)
    np.testing.assert_array_equal(a, b)
    vmap_out = attnjax.dot_product_attention(q, k, v, **{**kwargs, "implementation": "vmap"})
    np.testing.assert_allclose(a, vmap_out, atol=2e-5)
    assert not np.allclose(a, attnjax.dot_product_attention(q, k, v))


# ---- positional encodings --------------------------------------------------------------------


def test_sinusoidal_matches_formula():
    pe = np.asarray(F.sinusoidal_embedding(jnp.arange(5), 6))
    pos, i = np.arange(5)[:, None], np.arange(3)[None]
    angle = pos / 10_000 ** (2 * i / 6)
    np.testing.assert_allclose(pe[:, 0::2], np.sin(angle), atol=1e-6)
    np.testing.assert_allclose(pe[:, 1::2], np.cos(angle), atol=1e-6)


def test_rope_scores_depend_only_on_relative_position(key):
    kq, kk = jax.random.split(key)
    q, k = jax.random.normal(kq, (1, 1, 1, 8)), jax.random.normal(kk, (1, 1, 1, 8))

    def score(m, n):
        rq = F.apply_rope(q, jnp.array([[m]]))
        rk = F.apply_rope(k, jnp.array([[n]]))
        return float((rq * rk).sum())

    assert score(5, 2) == pytest.approx(score(13, 10), rel=1e-4)
    assert score(0, 0) == pytest.approx(float((q * k).sum()), rel=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 4), rel=1e-3)
    norm = jnp.linalg.norm(F.apply_rope(q, jnp.array([[9]])))
    assert float(norm) == pytest.approx(float(jnp.linalg.norm(q)), rel=1e-5)


def test_alibi_slopes_and_bias():
    np.testing.assert_allclose(F.alibi_slopes(8), [2.0**-i for i in range(1, 9)], rtol=1e-6)
    assert F.alibi_slopes(6).shape == (6,)
    bias = np.asarray(F.alibi_bias(8, 3, 4))
    assert bias.shape == (1, 8, 3, 4)
    assert bias[0, 0, 2, 0] == pytest.approx(-0.5 * 2)


# ---- bad inputs ------------------------------------------------------------------------------


def test_bad_inputs_name_the_argument(key):
    q, k, v = qkv(key)
    with pytest.raises(ValueError, match="head widths differ"):
        attnjax.dot_product_attention(q, k[..., :4], v)
    q3, k3, v3 = qkv(key, heads=4, kv_heads=3)
    with pytest.raises(ValueError, match=r"num_kv_heads=3 .* must divide num_heads=4"):
        attnjax.dot_product_attention(q3, k3, v3)
    with pytest.raises(ValueError, match=r"mask of shape \(2, 4, 5, 6\) is not broadcastable"):
        attnjax.dot_product_attention(q, k, v, mask=jnp.ones((2, 4, 5, 6), bool))
    with pytest.raises(ValueError, match="mask must be boolean"):
        attnjax.dot_product_attention(q, k, v, mask=jnp.ones((5, 7)))
    with pytest.raises(ValueError, match="implementation='flash2' is unknown"):
        attnjax.dot_product_attention(q, k, v, implementation="flash2")
    with pytest.raises(ValueError, match="value width R=3 differs"):
        attnjax.dot_product_attention(q, k, v[..., :3], implementation="xla")
    with pytest.raises(ValueError, match="return_pattern"):
        attnjax.dot_product_attention(q, k, v, implementation="xla", return_pattern=True)
    with pytest.raises(ValueError, match="needs an NVIDIA GPU"):  # a call cudnn would support
        attnjax.dot_product_attention(*qkv(key, dtype=jnp.bfloat16), implementation="cudnn")
    with pytest.raises(ValueError, match="query must have shape"):
        attnjax.dot_product_attention(q[0, 0], k, v)
    with pytest.raises(ValueError, match="local_window_size"):
        attnjax.dot_product_attention(q, k, v, local_window_size=(-1, 2))
    with pytest.raises(ValueError, match="dropout_rng"):
        attnjax.dot_product_attention(q, k, v, dropout_rate=0.1)


@pytest.mark.parametrize("name", ["query_seq_lengths", "key_value_seq_lengths"])
def test_seq_lengths_must_have_one_entry_per_example(key, name):
    q, k, v = qkv(key)  # B = 2
    with pytest.raises(
        ValueError, match=rf"{name} must have shape \[B\] = \[2\], got shape \(3,\)"
    ):
        attnjax.dot_product_attention(q, k, v, **{name: jnp.array([1, 2, 3])})


def test_seq_lengths_must_be_integers(key, without_jaxtyping):
    q, k, v = qkv(key)
    with pytest.raises(
        ValueError, match=r"query_seq_lengths must have shape \[B\] = \[2\], got shape \(\)"
    ):
        attnjax.dot_product_attention(q, k, v, query_seq_lengths=jnp.array(3))
    with pytest.raises(ValueError, match="key_value_seq_lengths must be integers"):
        attnjax.dot_product_attention(q, k, v, key_value_seq_lengths=jnp.array([2.0, 3.0]))
    with pytest.raises(ValueError, match=r"query_lengths must have shape \[B\] = \[1\]"):
        F.padding_mask(jnp.array([2]), 3, query_lengths=jnp.array([1, 2]), query_length=2)


def test_numpy_integer_sizes_are_ints(key):
    np.testing.assert_array_equal(F.causal_mask(np.int64(5)), F.causal_mask(5))
    np.testing.assert_array_equal(
        F.sliding_window_mask(np.int32(4), np.int64(6), (np.int64(2), np.int32(1))),
        F.sliding_window_mask(4, 6, (2, 1)),
    )
    np.testing.assert_array_equal(
        F.padding_mask(np.array([2, 3]), np.int64(4)), F.padding_mask(np.array([2, 3]), 4)
    )
    np.testing.assert_array_equal(F.alibi_bias(np.int64(4), np.int64(3)), F.alibi_bias(4, 3))
    np.testing.assert_array_equal(
        F.sinusoidal_embedding(jnp.arange(3), np.int64(6)), F.sinusoidal_embedding(jnp.arange(3), 6)
    )
    q, k, v = qkv(key)
    want = attnjax.dot_product_attention(q, k, v, local_window_size=2, implementation="einsum")
    got = attnjax.dot_product_attention(
        q, k, v, local_window_size=np.int64(2), implementation="einsum"
    )
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("window", [2.0, np.float32(2), True, (2, 1.5), (np.bool_(True), 1)])
def test_non_integer_windows_are_rejected(key, without_jaxtyping, window):
    q, k, v = qkv(key)
    with pytest.raises(ValueError, match="local_window_size must be an int, got"):
        attnjax.dot_product_attention(q, k, v, local_window_size=window)


def test_non_integer_sizes_are_rejected(without_jaxtyping):
    with pytest.raises(ValueError, match=r"query_length must be an int, got 5\.0"):
        F.causal_mask(5.0)
    with pytest.raises(ValueError, match="key_length must be a positive int, got 0"):
        F.sliding_window_mask(3, np.int64(0), 1)
    with pytest.raises(ValueError, match="num_heads must be an int"):
        F.alibi_slopes(8.0)
    with pytest.raises(ValueError, match="dim must be an int"):
        F.sinusoidal_embedding(jnp.arange(3), 6.0)


def test_single_head_functions_name_mismatched_arguments(key, without_jaxtyping):
    kq, kk = jax.random.split(key)
    q, k = jax.random.normal(kq, (4, 8)), jax.random.normal(kk, (5, 6))
    with pytest.raises(ValueError, match=r"q \(4, 8\) and k \(5, 6\) must have the same width H"):
        F.attention_scores(q, k)
    with pytest.raises(ValueError, match=r"k must have shape \[S H\], got shape \(1, 5, 8\)"):
        F.attention_scores(q, k[None, :, :2].repeat(4, -1))
    scores = F.attention_scores(q, jax.random.normal(kk, (5, 8)))
    with pytest.raises(ValueError, match=r"mask of shape \(4, 4\) is not broadcastable .*\[4, 5\]"):
        F.attention_pattern(scores, jnp.ones((4, 4), bool))
    with pytest.raises(ValueError, match=r"bias of shape \(5, 4\) is not broadcastable .*\[4, 5\]"):
        F.attention_pattern(scores, bias=jax.random.normal(kq, (5, 4)))
    with pytest.raises(ValueError, match="mask must be boolean"):
        F.attention_pattern(scores, jnp.ones((4, 5)))
    pattern = F.attention_pattern(scores)
    with pytest.raises(ValueError, match=r"pattern \(4, 5\) has S=5 keys but v \(6, 3\) has S=6"):
        F.attend(pattern, jax.random.normal(kk, (6, 3)))


# ---- cuDNN: restrictions checked before jax (or a GPU) sees the call ----------------------


@pytest.mark.parametrize(
    ("overrides", "kwargs", "message"),
    [
        (dict(dtype=jnp.float32), {}, "query dtype float32 .cudnn supports float16 and bfloat16"),
        (dict(width=12), {}, "head width H=12 .* multiple of 8, at most 256"),
        (dict(width=264), {}, "head width H=264 .* multiple of 8, at most 256"),
        ({}, dict(local_window_size=(2, 1)), r"local_window_size=\(2, 1\) with is_causal=False"),
        ({}, dict(local_window_size=3), r"local_window_size=\(3, 3\) with is_causal=False"),
    ],
)
def test_cudnn_restrictions_are_checked_before_jax(key, overrides, kwargs, message):
    q, k, v = qkv(key, **{"dtype": jnp.bfloat16, **overrides})
    with pytest.raises(ValueError, match=f"implementation='cudnn' does not support .*{message}"):
        attnjax.dot_product_attention(q, k, v, implementation="cudnn", **kwargs)


def test_jax_nn_paths_need_one_dtype(key):
    q, k, v = qkv(key)
    for impl in ("xla", "cudnn"):
        with pytest.raises(ValueError, match="query, key and value dtypes differ"):
            attnjax.dot_product_attention(q, k, v.astype(jnp.bfloat16), implementation=impl)
    out = attnjax.dot_product_attention(q, k, v.astype(jnp.bfloat16))  # None falls back
    expected, _ = numpy_attention(q, k, v)
    np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=3e-2, rtol=3e-2)


@pytest.fixture
def cudnn_via_xla(monkeypatch):
    """Pretend to be on a GPU and run each cudnn call through jax.nn's XLA implementation.

    This checks the arguments attnjax hands to cudnn against jax.nn's own semantics; what
    cudnn's kernels do with them is only checked on a GPU.
    """
    real, calls = jax.nn.dot_product_attention, []

    def fake(query, key, value, bias, mask, *, implementation, **kwargs):
        assert implementation == "cudnn"
        calls.append(dict(bias=bias, mask=mask, **kwargs))
        return real(query, key, value, bias, mask, implementation="xla", **kwargs)

    monkeypatch.setattr(jax_nn_backends, "cudnn_available", lambda: True)
    monkeypatch.setattr(jax.nn, "dot_product_attention", fake)
    return calls


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(local_window_size=(2, 1), is_causal=True, key_value_seq_lengths=jnp.array([7, 4])),
        dict(local_window_size=(2, 0)),
        dict(is_causal=True, query_seq_lengths=np.array([5, 3], np.int64)),
    ],
)
def test_cudnn_gets_arguments_it_supports(key, cudnn_via_xla, kwargs):
    q, k, v = qkv(key, dtype=jnp.bfloat16)
    bias = jax.random.normal(jax.random.fold_in(key, 5), (1, 4, 1, 7))  # broadcast over T
    mask = random_mask(jax.random.fold_in(key, 6), (2, 1, 1, 7), 0.8)
    out = attnjax.dot_product_attention(q, k, v, bias, mask, implementation="cudnn", **kwargs)
    want = attnjax.dot_product_attention(q, k, v, bias, mask, implementation="vmap", **kwargs)
    np.testing.assert_allclose(np.asarray(out, np.float32), want.astype(jnp.float32), atol=3e-2)
    (call,) = cudnn_via_xla
    window = call["local_window_size"]
    assert window is None or (window[1] == 0 and call["is_causal"])
    assert call["mask"].shape[-2:] == (5, 7) and call["bias"].shape[-2:] == (5, 7)
    assert call["bias"].dtype == jnp.bfloat16
    for name in ("query_seq_lengths", "key_value_seq_lengths"):
        assert call[name] is None or call[name].dtype == jnp.int32


def test_cudnn_errors_that_need_the_gpu_name_the_implementation(key, monkeypatch):
    def fake(*args, **kwargs):
        raise NotImplementedError("Unsupported sequence length Q 5, KV 7.")

    monkeypatch.setattr(jax_nn_backends, "cudnn_available", lambda: True)
    monkeypatch.setattr(jax.nn, "dot_product_attention", fake)
    q, k, v = qkv(key, dtype=jnp.bfloat16)
    with pytest.raises(ValueError, match="implementation='cudnn' does not support .*Q 5, KV 7"):
        attnjax.dot_product_attention(q, k, v, implementation="cudnn")


def test_automatic_choice_runs_where_pallas_would_on_tpu(key):
    """T = S = 128 (the Pallas block): implementation=None puts the Pallas branch (TPU) and the
    blocked one (elsewhere) into one platform_dependent; both must answer with one structure
    (the blocked kernel's unrequested lse once broke this, forward and backward)."""
    q, k, v = (jax.random.normal(k_, (1, 128, 2, 8)) for k_ in jax.random.split(key, 3))
    causal = np.tril(np.ones((128, 128), bool))
    expected, _ = numpy_attention(q, k, v, mask=causal)
    out = jax.jit(lambda q, k, v: attnjax.dot_product_attention(q, k, v, is_causal=True))(q, k, v)
    np.testing.assert_allclose(out, expected, atol=2e-5, rtol=2e-5)

    def loss(impl):
        return lambda q: attnjax.dot_product_attention(
            q, k, v, is_causal=True, implementation=impl
        ).sum()

    np.testing.assert_allclose(
        jax.grad(loss(None))(q), jax.grad(loss("einsum"))(q), atol=2e-5, rtol=2e-5
    )
