"""ModelConfig validation, the decoder LM, and KV-cache decoding against full recomputation."""

import jax
import jax.numpy as jnp
import jaxtyping
import ml_collections
import numpy as np
import pytest
from flax import nnx

from attnjax.models import DecoderLM, ModelConfig, greedy_generate
from attnjax.models.transformer import _greedy

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


def test_out_of_range_ids_raise_eagerly_and_under_jit_grad_vmap(key):
    model = DecoderLM(ModelConfig(**{**TINY, "num_layers": 1}), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(key, (2, 6), 0, 40)
    vocab = r"tokens must be in \[0, vocab_size=40\), got "
    for bad, value in ((40, "40"), (-1, "-1")):
        with pytest.raises(ValueError, match=vocab + value):
            model(tokens.at[1, 3].set(bad))
    late = jnp.arange(11, 17)[None]
    with pytest.raises(ValueError, match=r"positions must be in \[0, max_seq_len=16\), got 16"):
        model(tokens, positions=late)
    forward = nnx.jit(lambda m, t, p: m(t, positions=p))
    expected = model(tokens, positions=late - 1)
    np.testing.assert_allclose(forward(model, tokens, late - 1), expected, atol=1e-6)
    with pytest.raises(jax.errors.JaxRuntimeError, match=vocab + "40"):
        jax.block_until_ready(forward(model, tokens.at[0, 0].set(40), late - 1))
    with pytest.raises(jax.errors.JaxRuntimeError, match="positions must be in .* got 16"):
        jax.block_until_ready(forward(model, tokens, late))
    loss = nnx.jit(nnx.value_and_grad(lambda m, t: m(t).mean()))
    with pytest.raises(jax.errors.JaxRuntimeError, match=vocab + "-1"):
        jax.block_until_ready(loss(model, tokens.at[1, 5].set(-1)))
    rows = nnx.jit(lambda m, t: jax.vmap(lambda row: m(row[None])[0])(t))
    np.testing.assert_allclose(rows(model, tokens), model(tokens), atol=1e-5)
    with pytest.raises(jax.errors.JaxRuntimeError, match=vocab + "40"):
        jax.block_until_ready(rows(model, tokens.at[1, 2].set(40)))


@pytest.mark.parametrize("position_embedding", ["learned", "rope", "alibi"])
def test_decoding_past_the_cache_raises_under_jit(key, position_embedding):
    config = ModelConfig(**{**TINY, "num_layers": 1}, position_embedding=position_embedding)
    model = DecoderLM(config, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(key, (1, 9), 0, 40)
    _, cache = model.decode(tokens[:, :6], model.init_cache(1, 8))
    step = nnx.jit(lambda m, t, c: m.decode(t, c))
    for t in (6, 7):  # the last two free slots
        logits, cache = step(model, tokens[:, t : t + 1], cache)
        assert bool(jnp.all(jnp.isfinite(logits)))
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"cache overflow: 8 cached \+ 1 new"):
        jax.block_until_ready(step(model, tokens[:, 8:9], cache))
    with pytest.raises(ValueError, match=r"cache overflow: 8 cached \+ 1 new"):
        model.decode(tokens[:, 8:9], cache)


def test_greedy_generate_with_dropout_runs_in_eval_mode_and_keeps_the_callers_mode(key):
    config = ModelConfig(**TINY, dropout_rate=0.3, attention_dropout_rate=0.3)
    model = DecoderLM(config, rngs=nnx.Rngs(0, dropout=1))
    prompt = jax.random.randint(key, (2, 4), 0, 40)
    tokens, logits = greedy_generate(model, prompt, 5)
    again, _ = greedy_generate(model, prompt, 5)
    np.testing.assert_array_equal(tokens, again)
    assert model.blocks[0].dropout.deterministic is False  # still training
    assert model.blocks[0].attention.deterministic is False
    evaluated = nnx.clone(model)
    evaluated.eval()
    expected_tokens, expected_logits = greedy_by_recomputing(evaluated, prompt, 5)
    np.testing.assert_array_equal(tokens, expected_tokens)
    np.testing.assert_allclose(logits, expected_logits, atol=1e-4)


def test_config_rejects_wrong_types_and_unknown_implementations(monkeypatch):
    monkeypatch.setattr(jaxtyping.config, "jaxtyping_disable", True)  # as a user runs it
    for base in (0.0, -1.0, float("nan"), "10000"):
        with pytest.raises(ValueError, match="rope_base must be a positive finite number"):
            ModelConfig(position_embedding="rope", rope_base=base)
    with pytest.raises(ValueError, match="tie_embeddings must be True or False, got 'no'"):
        ModelConfig(tie_embeddings="no")
    with pytest.raises(ValueError, match="attention_bias must be True or False, got 1"):
        ModelConfig(attention_bias=1)
    with pytest.raises(ValueError, match="attention_implementation='flash' is unknown"):
        ModelConfig(attention_implementation="flash")
    assert ModelConfig(attention_implementation="einsum").attention_implementation == "einsum"
    with pytest.raises(ValueError, match="num_heads must be a positive int, got True"):
        ModelConfig(model_dim=16, num_heads=True)
    with pytest.raises(ValueError, match="type_vocab_size must be an int >= 0, got True"):
        ModelConfig(type_vocab_size=True)
    with pytest.raises(ValueError, match="norm_eps must be a positive finite number"):
        ModelConfig(norm_eps=float("nan"))


def test_generate_and_decode_check_ranks_and_cache_batch_size(key, monkeypatch):
    monkeypatch.setattr(jaxtyping.config, "jaxtyping_disable", True)  # as a user runs it
    model = DecoderLM(ModelConfig(**TINY), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"tokens must have shape \[B, T\], got \(3,\)"):
        greedy_generate(model, jnp.ones((3,), jnp.int32), 1)
    with pytest.raises(ValueError, match=r"tokens must be in \[0, vocab_size=40\), got 45"):
        greedy_generate(model, jnp.full((1, 3), 45, jnp.int32), 1)
    tokens = jax.random.randint(key, (2, 3), 0, 40)
    with pytest.raises(ValueError, match="cache holds batch_size=1 sequences, the input has batch"):
        model.decode(tokens, model.init_cache(1))


def _callbacks_in_decode(num_layers, key):
    model = DecoderLM(ModelConfig(**{**TINY, "num_layers": num_layers}), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)

    def decode(state, tokens, cache):
        return nnx.merge(graphdef, state).decode(tokens, cache)

    tokens = jax.random.randint(key, (1, 2), 0, TINY["vocab_size"])
    return jax.jit(decode).lower(state, tokens, model.init_cache(1, 8)).as_text().count("callback")


def test_decode_checks_the_cache_once_whatever_the_depth(key):
    assert _callbacks_in_decode(1, key) == _callbacks_in_decode(3, key) > 0


def test_greedy_generate_compiles_no_run_time_checks(key):
    model = DecoderLM(ModelConfig(**TINY), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    prompt = jax.random.randint(key, (1, 3), 0, TINY["vocab_size"])
    assert "callback" not in _greedy.lower(graphdef, state, prompt, 4).as_text()


# ---- attention-only models -------------------------------------------------------------------


def test_attention_only_block_is_x_plus_attention_of_layernorm_in_float64(key):
    """A pre-LN attention-only block against ``x + attn(LN(x))`` written in float64 NumPy."""
    from attnjax.models.transformer import TransformerBlock
    from tests.reference import numpy_attention

    config = ModelConfig(**{**TINY, "num_heads": 2}, attention_only=True, attention_bias=True)
    block = TransformerBlock(config, rngs=nnx.Rngs(0))
    assert block.mlp is None and block.mlp_norm is None
    params = nnx.to_pure_dict(nnx.state(block, nnx.Param))
    assert set(params) == {"attention", "attention_norm"}  # no MLP or MLP-norm leaves at all
    rng = np.random.default_rng(7)
    params = jax.tree.map(lambda a: (0.5 * rng.standard_normal(a.shape)).astype(np.float32), params)
    nnx.update(block, params)
    x = jax.random.normal(key, (2, 12, 16))
    got = jax.jit(lambda s, x: nnx.merge(nnx.graphdef(block), s)(x))(nnx.state(block), x)

    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    xs = np.asarray(x, np.float64)
    mean = xs.mean(-1, keepdims=True)
    normed = (xs - mean) / np.sqrt(((xs - mean) ** 2).mean(-1, keepdims=True) + config.norm_eps)
    normed = normed * p["attention_norm"]["scale"] + p["attention_norm"]["bias"]
    a = p["attention"]
    q = np.einsum("btd,dnh->btnh", normed, a["query"]) + a["query_bias"]
    k = np.einsum("btd,dnh->btnh", normed, a["key"]) + a["key_bias"]
    v = np.einsum("btd,dnr->btnr", normed, a["value_down"]) + a["value_bias"]
    out, _ = numpy_attention(q, k, v, mask=np.tril(np.ones((12, 12), bool)))
    want = xs + np.einsum("btnr,nrd->btd", out, a["value_up"]) + a["output_bias"]
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_attention_only_flag_is_validated_by_name(monkeypatch):
    monkeypatch.setattr(jaxtyping.config, "jaxtyping_disable", True)  # as a user runs it
    with pytest.raises(ValueError, match="attention_only must be True or False, got 'yes'"):
        ModelConfig(attention_only="yes")
    assert ModelConfig(attention_only=True).resolved_mlp_dim == 0
    assert ModelConfig(attention_only=True, mlp_dim=8).resolved_mlp_dim == 0
