"""The BERT-layout Encoder against a float64 NumPy BERT written from the paper's equations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attnjax.models import ModelConfig
from attnjax.models.encoder import Encoder, bert_config
from attnjax.pretrained import params_from_tree
from tests.reference import numpy_attention

SIZES = dict(vocab_size=50, max_seq_len=16, model_dim=32, num_layers=2, num_heads=4, mlp_dim=48)


def random_encoder(seed, **overrides):
    """An Encoder whose every parameter is random (norm scales near 1, non-zero biases), so
    each one matters; built abstractly, then filled (no per-op eager compiles)."""
    config = bert_config(**{**SIZES, **overrides})
    abstract = nnx.eval_shape(lambda: Encoder(config, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map_with_path(
        lambda path, leaf: (
            1.0 + 0.2 * rng.standard_normal(leaf.shape)
            if "scale" in jax.tree_util.keystr(path)
            else 0.3 * rng.standard_normal(leaf.shape)
        ).astype(np.float32),
        nnx.to_pure_dict(nnx.state(abstract, nnx.Param)),
    )
    return params_from_tree(config, params)


@pytest.fixture(scope="module")
def model():
    return random_encoder(seed=5)


def jitted(model):
    """``model(...)`` compiled once per shape (eager NNX compiles every op separately)."""
    graphdef, state = nnx.split(model)

    @jax.jit(static_argnames=("return_patterns", "return_hidden_states"))
    def call(state, tokens, **kwargs):
        return nnx.merge(graphdef, state)(tokens, **kwargs)

    return lambda tokens, **kwargs: call(state, tokens, **kwargs)


def numpy_layernorm(x, p, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def numpy_bert(params, config, tokens, types, mask):
    """float64 BERT: embeddings + LayerNorm, then post-LN blocks with an exact-GELU MLP (no MLP
    step with ``config.attention_only``)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    erf = np.vectorize(math.erf)
    length = tokens.shape[1]
    x = (
        p["embeddings"]["token"]["embedding"][tokens]
        + p["embeddings"]["position"]["embedding"][np.arange(length)][None]
        + p["embeddings"]["token_type"]["embedding"][types]
    )
    x = numpy_layernorm(x, p["embeddings"]["norm"], config.norm_eps)
    hidden, patterns = [x], []
    key_mask = mask.astype(bool)[:, None, None, :]
    for i in range(config.num_layers):
        a = p["blocks"][i]["attention"]
        q = np.einsum("btd,dnh->btnh", x, a["query"]) + a["query_bias"]
        k = np.einsum("btd,dnh->btnh", x, a["key"]) + a["key_bias"]
        v = np.einsum("btd,dnr->btnr", x, a["value_down"]) + a["value_bias"]
        out, pattern = numpy_attention(q, k, v, mask=key_mask)
        attended = np.einsum("btnr,nrd->btd", out, a["value_up"]) + a["output_bias"]
        x = numpy_layernorm(x + attended, p["blocks"][i]["attention_norm"], config.norm_eps)
        if config.attention_only:
            hidden.append(x)
            patterns.append(pattern)
            continue
        m = p["blocks"][i]["mlp"]
        up = x @ m["up"]["kernel"] + m["up"]["bias"]
        gelu = 0.5 * up * (1.0 + erf(up / math.sqrt(2.0)))
        x = numpy_layernorm(
            x + gelu @ m["down"]["kernel"] + m["down"]["bias"],
            p["blocks"][i]["mlp_norm"],
            config.norm_eps,
        )
        hidden.append(x)
        patterns.append(pattern)
    return np.stack(hidden), np.stack(patterns)


def random_batch(key, vocab, batch=2, length=8):
    k1, k2 = jax.random.split(key)
    tokens = jax.random.randint(k1, (batch, length), 0, vocab)
    types = jax.random.randint(k2, (batch, length), 0, 2)
    mask = jnp.ones((batch, length), jnp.int32).at[-1, 5:].set(0)  # last: 5 real tokens
    return tokens, types, mask


def test_encoder_matches_numpy_bert(model, key):
    tokens, types, mask = random_batch(key, model.config.vocab_size)
    last, patterns, hidden = jitted(model)(
        tokens,
        token_types=types,
        attention_mask=mask,
        return_patterns=True,
        return_hidden_states=True,
    )
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    want_hidden, want_patterns = numpy_bert(
        params, model.config, *(np.asarray(a) for a in (tokens, types, mask))
    )
    assert hidden.shape == (3, 2, 8, 32) and patterns.shape == (2, 2, 4, 8, 8)
    np.testing.assert_allclose(hidden, want_hidden, atol=2e-5)
    np.testing.assert_allclose(patterns, want_patterns, atol=2e-6)
    np.testing.assert_array_equal(last, hidden[-1])
    assert float(jnp.abs(patterns[:, 1, :, :, 5:]).max()) == 0.0  # padded keys get nothing


def test_eager_call_equals_jitted(model, key):
    tokens, types, mask = random_batch(key, model.config.vocab_size)
    eager = model(tokens, token_types=types, attention_mask=mask)
    np.testing.assert_allclose(
        eager, jitted(model)(tokens, token_types=types, attention_mask=mask), atol=1e-5
    )


def test_padding_does_not_change_real_tokens(model, key):
    k_batch, k_pad = jax.random.split(key)
    tokens, types, mask = random_batch(k_batch, model.config.vocab_size)
    other_padding = jnp.where(mask == 1, tokens, jax.random.randint(k_pad, tokens.shape, 0, 50))
    run = jitted(model)
    base = run(tokens, token_types=types, attention_mask=mask)
    repadded = run(other_padding, token_types=types * mask, attention_mask=mask)
    np.testing.assert_allclose(repadded[1, :5], base[1, :5], atol=1e-5)
    unmasked = run(other_padding, token_types=types * mask)
    assert float(jnp.abs(unmasked[1, :5] - base[1, :5]).max()) > 1e-3  # the mask mattered


def test_encoder_is_bidirectional_and_uses_token_types(model, key):
    tokens, types, _ = random_batch(key, model.config.vocab_size)
    run = jitted(model)
    base = run(tokens, token_types=types)
    later = run(tokens.at[:, -1].add(1) % model.config.vocab_size, token_types=types)
    assert float(jnp.abs(later[:, 0] - base[:, 0]).min(-1).max()) > 0  # first token sees last
    assert float(jnp.abs(later[:, 0] - base[:, 0]).max()) > 1e-3
    flipped = run(tokens, token_types=1 - types)
    assert float(jnp.abs(flipped - base).max()) > 1e-3
    np.testing.assert_array_equal(run(tokens), run(tokens, token_types=jnp.zeros_like(types)))


def test_encoder_has_gradients_for_every_parameter(model, key):
    tokens, types, mask = random_batch(key, model.config.vocab_size)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def loss(params):
        hidden = nnx.merge(graphdef, params, rest)(tokens, token_types=types, attention_mask=mask)
        return jnp.sum(jnp.sin(hidden) * mask[..., None])

    grads = jax.grad(loss)(params)
    for path, grad in jax.tree_util.tree_flatten_with_path(grads)[0]:
        assert bool(jnp.all(jnp.isfinite(grad))), path
        assert float(jnp.abs(grad).max()) > 0, path  # every leaf takes part


def test_parameter_layout_follows_the_shared_names():
    model = nnx.eval_shape(lambda: Encoder(bert_config(**SIZES), rngs=nnx.Rngs(0)))
    shapes = jax.tree.map(lambda a: a.shape, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    assert shapes["embeddings"]["token_type"]["embedding"] == (2, 32)
    assert shapes["embeddings"]["norm"] == {"scale": (32,), "bias": (32,)}
    attention = shapes["blocks"][1]["attention"]
    assert attention["query"] == (32, 4, 8) and attention["value_up"] == (4, 8, 32)
    assert attention["output_bias"] == (32,) and attention["key_bias"] == (4, 8)
    assert shapes["blocks"][0]["mlp"]["up"] == {"kernel": (32, 48), "bias": (48,)}
    assert "final_norm" not in shapes and "unembed" not in shapes


def test_bert_config_settings():
    config = bert_config(**SIZES)
    assert (config.architecture, config.norm_position, config.activation) == (
        "encoder",
        "post",
        "gelu",
    )
    assert config.embedding_norm and not config.final_norm and config.attention_bias
    assert not config.is_causal and config.type_vocab_size == 2


def test_pre_ln_encoder_applies_its_final_norm_last(key):
    overrides = dict(norm_position="pre", type_vocab_size=0)
    model = random_encoder(seed=6, final_norm=True, **overrides)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    final = params.pop("final_norm")
    plain = params_from_tree(bert_config(**SIZES, final_norm=False, **overrides), params)
    tokens = jax.random.randint(key, (2, 8), 0, 50)
    last, hidden = jitted(model)(tokens, return_hidden_states=True)
    np.testing.assert_array_equal(last, hidden[-1])
    want = numpy_layernorm(np.asarray(jitted(plain)(tokens), np.float64), final, 1e-12)
    np.testing.assert_allclose(last, want, atol=2e-5)


def test_encoder_errors_name_the_argument(model, key):
    with pytest.raises(ValueError, match="architecture='encoder'"):
        Encoder(ModelConfig(**SIZES), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(key, (2, 6), 0, 50)
    # Under pytest jaxtyping may reject a mismatched [B, T] first (a TypeError naming it).
    with pytest.raises((ValueError, TypeError), match="attention_mask"):
        model(tokens, attention_mask=jnp.ones((2, 5)))
    with pytest.raises((ValueError, TypeError), match="token_types"):
        model(tokens, token_types=jnp.zeros((1, 6), int))
    with pytest.raises(ValueError, match="max_seq_len=16"):
        model(jnp.zeros((1, 17), int))
    with pytest.raises(ValueError, match="integer ids"):
        model(tokens.astype(jnp.float32))
    no_types = random_encoder(seed=0, type_vocab_size=0)
    with pytest.raises(ValueError, match="type_vocab_size=0"):
        no_types(tokens, token_types=jnp.zeros_like(tokens))


def test_encoder_rejects_out_of_range_ids_eagerly_and_under_jit(model, key):
    tokens, types, mask = random_batch(key, model.config.vocab_size)
    vocab = r"tokens must be in \[0, vocab_size=50\), got "
    with pytest.raises(ValueError, match=vocab + "50"):
        model(tokens.at[0, 2].set(50), token_types=types)
    with pytest.raises(ValueError, match=vocab + "-3"):
        model(tokens.at[1, 0].set(-3))
    with pytest.raises(ValueError, match=r"token_types must be in \[0, type_vocab_size=2\), got 2"):
        model(tokens, token_types=types.at[1, 1].set(2))
    run = jitted(model)
    with pytest.raises(jax.errors.JaxRuntimeError, match=vocab + "50"):
        jax.block_until_ready(run(tokens.at[0, 2].set(50), token_types=types))
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"token_types must be .* got -1"):
        jax.block_until_ready(run(tokens, token_types=types.at[0, 0].set(-1)))


def test_attention_only_encoder_is_post_ln_attention_blocks(key):
    """``norm(x + attn(x))`` per block, against the float64 reference with its MLP left out."""
    model = random_encoder(seed=6, attention_only=True, model_dim=16, num_heads=2)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    assert set(params["blocks"][0]) == {"attention", "attention_norm"}
    tokens, types, mask = random_batch(key, model.config.vocab_size)
    hidden = jitted(model)(
        tokens, token_types=types, attention_mask=mask, return_hidden_states=True
    )[1]
    want, _ = numpy_bert(params, model.config, *(np.asarray(a) for a in (tokens, types, mask)))
    np.testing.assert_allclose(hidden, want, atol=2e-5)
