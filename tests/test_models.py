"""ModelConfig validation, the decoder LM, and KV-cache decoding against full recomputation."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from attnjax.models import DecoderLM, ModelConfig, greedy_generate

TINY = dict(vocab_size=40, max_seq_len=16, model_dim=16, num_layers=2, num_heads=4)


def greedy_by_recomputing(model, prompt, steps):
    """Reference decoding: run the whole sequence again for every new token (no cache)."""
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, tokens: nnx.merge(graphdef, state)(tokens)[:, -1])
    tokens, chosen = prompt, []
    for _ in range(steps):
        logits = forward(state, tokens)
        chosen.append(logits)
        tokens = jnp.concatenate([tokens, jnp.argmax(logits, -1)[:, None].astype(tokens.dtype)], 1)
    return tokens, jnp.stack(chosen, axis=1)


@pytest.mark.parametrize(
    "variant",
    [
        dict(),
        dict(num_kv_heads=2, position_embedding="rope", norm="rmsnorm", tie_embeddings=False),
        dict(num_kv_heads=1, position_embedding="alibi", value_dim=2),
        dict(position_embedding="sinusoidal", attention_bias=True, head_dim=6),
    ],
    ids=["gpt2-like", "gqa-rope-rms", "mqa-alibi-rank2", "sinusoidal-bias"],
)
def test_greedy_decoding_with_cache_equals_recomputation(key, variant):
    model = DecoderLM(ModelConfig(**TINY, **variant), rngs=nnx.Rngs(0))
    prompt = jax.random.randint(key, (2, 5), 0, 40)
    tokens, logits = greedy_generate(model, prompt, 6)
    expected_tokens, expected_logits = greedy_by_recomputing(model, prompt, 6)
    np.testing.assert_array_equal(tokens, expected_tokens)
    np.testing.assert_allclose(logits, expected_logits, atol=1e-4)


def test_decoder_is_causal_and_returns_patterns(key):
    model = DecoderLM(ModelConfig(**TINY), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(key, (2, 8), 0, 40)
    logits, patterns = model(tokens, return_patterns=True)
    assert logits.shape == (2, 8, 40) and logits.dtype == jnp.float32
    assert patterns.shape == (2, 2, 4, 8, 8)  # [L, B, N, T, T]
    assert float(jnp.abs(jnp.triu(patterns, k=1)).max()) == 0.0
    # Changing a later token leaves earlier logits unchanged.
    changed = tokens.at[:, 6].set((tokens[:, 6] + 1) % 40)
    np.testing.assert_allclose(model(changed)[:, :6], logits[:, :6], atol=1e-6)
    assert not np.allclose(model(changed)[:, 6], logits[:, 6])


def test_tied_embeddings_share_the_token_matrix(key):
    model = DecoderLM(ModelConfig(**TINY), rngs=nnx.Rngs(0))
    assert model.unembed is None
    tokens = jax.random.randint(key, (1, 4), 0, 40)
    grads = nnx.jit(nnx.grad(lambda m: m(tokens).sum()))(model)
    assert float(jnp.abs(grads.embeddings.token.embedding[...]).sum()) > 0


def test_config_derives_sizes_and_names_bad_fields():
    config = ModelConfig(model_dim=48, num_heads=6, num_kv_heads=2)
    assert (config.resolved_head_dim, config.resolved_value_dim, config.resolved_mlp_dim) == (
        8,
        8,
        192,
    )
    assert ModelConfig(model_dim=48, num_heads=5, head_dim=8).resolved_head_dim == 8
    with pytest.raises(ValueError, match="num_heads=5 must divide model_dim=48"):
        ModelConfig(model_dim=48, num_heads=5)
    with pytest.raises(ValueError, match="num_kv_heads=4 must divide num_heads=6"):
        ModelConfig(model_dim=48, num_heads=6, num_kv_heads=4)
    with pytest.raises(ValueError, match="num_layers must be a positive int, got 0"):
        ModelConfig(num_layers=0)
    with pytest.raises(ValueError, match="model_dim must be a positive int, got -8"):
        ModelConfig(model_dim=-8)
    with pytest.raises(ValueError, match="position_embedding='absolute' is unknown"):
        ModelConfig(position_embedding="absolute")
    with pytest.raises(ValueError, match="no field 'num_head'; did you mean 'num_heads'"):
        ModelConfig.from_config({"num_head": 4})
    cfg = ml_collections.ConfigDict(dict(num_heads=2, model_dim=8))
    assert ModelConfig.from_config(cfg).resolved_head_dim == 4
    with pytest.raises(dataclasses_frozen_error()):
        config.num_heads = 3


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_model_rejects_bad_tokens_and_too_long_requests():
    model = DecoderLM(ModelConfig(**TINY), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="exceeds max_seq_len=16"):
        model(jnp.zeros((1, 17), jnp.int32))
    with pytest.raises(ValueError, match="tokens must be integer ids"):
        model(jnp.zeros((1, 4), jnp.float32))
    with pytest.raises(ValueError, match="max_new_tokens=12 exceeds max_seq_len=16"):
        greedy_generate(model, jnp.zeros((1, 5), jnp.int32), 12)
    with pytest.raises(ValueError, match="max_length=32 exceeds"):
        model.init_cache(1, 32)


def test_modules_split_and_merge_without_shared_state(key):
    """Graph-mode split/merge round-trips and each block owns distinct arrays."""
    model = DecoderLM(ModelConfig(**TINY), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    clone = nnx.merge(graphdef, state)
    tokens = jax.random.randint(key, (1, 6), 0, 40)
    np.testing.assert_array_equal(clone(tokens), model(tokens))
    first, second = model.blocks[0].attention.query[...], model.blocks[1].attention.query[...]
    assert first is not second and not np.allclose(first, second)


def test_tree_mode_split_merge_and_jit(key):
    """Flax NNX's tree mode (graph=False) works: modules are trees, nothing is shared."""
    model = DecoderLM(ModelConfig(**TINY, attention_dropout_rate=0.1), rngs=nnx.Rngs(0))
    model.eval()
    tokens = jax.random.randint(key, (1, 6), 0, 40)
    graphdef, state = nnx.split(model, graph=False)
    np.testing.assert_array_equal(nnx.merge(graphdef, state)(tokens), model(tokens))
    forward = nnx.jit(lambda m, t: m(t), graph=False)
    np.testing.assert_allclose(forward(model, tokens), model(tokens), atol=1e-6)
