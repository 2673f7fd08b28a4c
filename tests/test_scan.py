"""Layers as a scan (ModelConfig.scan_layers): the stacked layout equals the unrolled one.

Values and gradients of the decoder and the encoder (GQA), rematerialisation, dropout streams,
counts, the per-head view, patterns, KV-cache decoding, sharding specs, checkpoints and the
pretrained MiniLM all agree between the two layouts.
"""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from attnjax import pretrained
from attnjax.accounting import count_params, measure_params, reconcile
from attnjax.analysis import decoder_patterns
from attnjax.analysis.circuits import circuit_spectra, qk_circuit
from attnjax.data import make_task
from attnjax.models import DecoderLM, Encoder, ModelConfig, bert_config, greedy_generate
from attnjax.models.config import SCAN_LAYERS_FROM
from attnjax.models.scan import layer_block, num_blocks, stack_layers, unstack_layers
from attnjax.pretrained.api import params_from_tree
from attnjax.training.checkpoint import Checkpointer
from attnjax.training.sharding import partition_spec
from attnjax.training.state import init_model, init_train_state, make_optimizer
from attnjax.training.step import make_train_step

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
DECODER = ModelConfig(
    vocab_size=48, max_seq_len=16, model_dim=32, num_layers=3, num_heads=4, num_kv_heads=2,
    mlp_dim=48, attention_bias=True, position_embedding="rope",
)  # fmt: skip
ENCODER = bert_config(
    vocab_size=48, max_seq_len=16, model_dim=32, num_layers=3, num_heads=4, num_kv_heads=2,
    mlp_dim=48,
)  # fmt: skip


def random_params(model, seed):
    """Fresh random values for every parameter of ``model`` (a pure dict, its layout)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda leaf: (0.3 * rng.standard_normal(leaf.shape)).astype(np.float32),
        nnx.to_pure_dict(nnx.state(model, nnx.Param)),
    )


def models(config, seed):
    """(unrolled, scanned) models of ``config`` holding the same fresh random weights: the
    scanned one gets the unrolled one's through ``stack_layers``."""
    flat = config.replace(scan_layers=False)
    params = random_params(nnx.eval_shape(lambda: _build(flat)), seed)
    unrolled = params_from_tree(flat, params)
    scanned = params_from_tree(config.replace(scan_layers=True), stack_layers(params))
    return unrolled, scanned


def _build(config):
    model_class = DecoderLM if config.architecture == "decoder" else Encoder
    return model_class(config, rngs=nnx.Rngs(0))


def jitted(fn, model):
    """``fn(model)`` compiled once (faster than op by op), ``model`` left unchanged."""
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s: fn(nnx.merge(graphdef, s)))(state)


def grads(model, loss):
    """d loss / d params of ``model`` as a pure dict, in the unrolled layout."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    value = jax.jit(jax.grad(lambda p: loss(nnx.merge(graphdef, p, rest))))(params)
    tree = nnx.to_pure_dict(value)
    return unstack_layers(tree) if "0" not in tree["blocks"] and 0 not in tree["blocks"] else tree


def assert_trees_close(a, b, **tolerance):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tolerance)


# ---- config ----------------------------------------------------------------------------------


def test_config_fields_are_validated_and_the_default_follows_depth(monkeypatch):
    monkeypatch.setattr(jaxtyping.config, "jaxtyping_disable", True)  # as a user runs it
    with pytest.raises(ValueError, match="remat='some'"):
        ModelConfig(remat="some")
    with pytest.raises(ValueError, match="scan_layers must be True or False"):
        ModelConfig(scan_layers=1)
    assert not ModelConfig(num_layers=SCAN_LAYERS_FROM - 1).resolved_scan_layers
    assert ModelConfig(num_layers=SCAN_LAYERS_FROM).resolved_scan_layers
    assert ModelConfig(num_layers=1, scan_layers=True).resolved_scan_layers


def test_same_seed_gives_the_same_weights_in_both_layouts():
    unrolled = DecoderLM(DECODER.replace(scan_layers=False), rngs=nnx.Rngs(3))
    scanned = DecoderLM(DECODER.replace(scan_layers=True), rngs=nnx.Rngs(3))
    assert scanned.blocks.attention.query.shape == (3, 32, 4, 8)
    assert num_blocks(scanned.blocks) == num_blocks(unrolled.blocks) == 3
    flat = nnx.to_pure_dict(nnx.state(unrolled, nnx.Param))
    stacked = nnx.to_pure_dict(nnx.state(scanned, nnx.Param))
    assert_trees_close(stack_layers(flat), stacked, rtol=0, atol=0)
    assert_trees_close(unstack_layers(stacked), flat, rtol=0, atol=0)


def test_layout_helpers_refuse_the_wrong_layout():
    tree = {"blocks": {0: {"w": np.ones((2, 3))}, 1: {"w": np.zeros((2, 3))}}}
    stacked = stack_layers(tree)
    assert stacked["blocks"]["w"].shape == (2, 2, 3)
    with pytest.raises(ValueError, match="keyed by layer already"):
        unstack_layers(tree)
    with pytest.raises(ValueError, match="keyed by layer 0..L-1"):
        stack_layers(stacked)
    with pytest.raises(ValueError, match="keyed by layer 0..L-1"):
        stack_layers({"blocks": {0: {"w": np.ones(2)}, 2: {"w": np.ones(2)}}})


# ---- values and gradients --------------------------------------------------------------------


def test_decoder_scanned_equals_unrolled_values_patterns_and_gradients(key):
    unrolled, scanned = models(DECODER, seed=1)
    tokens = jax.random.randint(key, (2, 8), 0, DECODER.vocab_size)
    run = lambda m: m(tokens, return_patterns=True, return_hidden_states=True)
    a, b = jitted(run, unrolled), jitted(run, scanned)
    assert b[1].shape == (3, 2, 4, 8, 8) and b[2].shape == (4, 2, 8, 32)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
    target = jax.random.normal(jax.random.fold_in(key, 1), (2, 8, DECODER.vocab_size))
    loss = lambda m: jnp.mean((m(tokens) - target) ** 2)
    assert_trees_close(grads(unrolled, loss), grads(scanned, loss), rtol=1e-4, atol=1e-6)


def test_encoder_scanned_equals_unrolled_values_and_gradients(key):
    unrolled, scanned = models(ENCODER, seed=2)
    tokens = jax.random.randint(key, (2, 8), 0, ENCODER.vocab_size)
    types = jax.random.randint(jax.random.fold_in(key, 1), (2, 8), 0, 2)
    mask = jnp.asarray([[1] * 8, [1] * 5 + [0] * 3])
    run = lambda m: m(tokens, token_types=types, attention_mask=mask, return_patterns=True)
    for x, y in zip(jitted(run, unrolled), jitted(run, scanned), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
    loss = lambda m: jnp.sum(jnp.sin(run(m)[0]))
    assert_trees_close(grads(unrolled, loss), grads(scanned, loss), rtol=1e-4, atol=1e-5)


# Each policy in one layout (both layouts take the policy from scan._checkpoint): half the
# compiles.
@pytest.mark.parametrize("remat, scan", [("full", True), ("dots", False)])
def test_remat_policies_equal_no_remat(remat, scan, key):
    config = DECODER.replace(num_layers=2, scan_layers=scan)
    params = random_params(nnx.eval_shape(lambda: _build(config)), seed=3)
    plain = params_from_tree(config, params)
    rematerialised = params_from_tree(config.replace(remat=remat), params)
    tokens = jax.random.randint(key, (2, 8), 0, config.vocab_size)
    loss = lambda m: jnp.mean(jax.nn.log_softmax(m(tokens))[..., 0])
    np.testing.assert_allclose(jitted(loss, rematerialised), jitted(loss, plain), rtol=1e-6)
    assert_trees_close(grads(rematerialised, loss), grads(plain, loss), rtol=1e-5, atol=1e-7)


def test_dropout_streams_are_the_same_per_layer_and_advance(key):
    """Training mode: each scanned layer draws from its own stream, as the unrolled one does,
    so the two layouts drop the same units; a second call draws new masks."""
    config = DECODER.replace(dropout_rate=0.3, attention_dropout_rate=0.3, remat="full")
    unrolled = DecoderLM(config.replace(scan_layers=False), rngs=nnx.Rngs(4))
    scanned = DecoderLM(config.replace(scan_layers=True), rngs=nnx.Rngs(4))
    tokens = jax.random.randint(key, (2, 8), 0, config.vocab_size)
    call = nnx.jit(lambda m, t: m(t))  # RNG counts written back to the models
    first_u, first_s = call(unrolled, tokens), call(scanned, tokens)
    np.testing.assert_allclose(first_u, first_s, rtol=1e-5, atol=1e-5)
    second_s = call(scanned, tokens)
    np.testing.assert_allclose(call(unrolled, tokens), second_s, rtol=1e-5, atol=1e-5)
    assert not np.allclose(first_s, second_s)


# ---- counts and the per-head view ------------------------------------------------------------


@pytest.mark.parametrize("config", [DECODER, ENCODER])
def test_counts_are_identical_and_reconcile(config):
    flat, stacked = (
        measure_params(config.replace(scan_layers=s)) for s in (False, True)
    )  # fmt: skip
    assert sum(x.size for x in flat) == sum(x.size for x in stacked)
    assert count_params(config.replace(scan_layers=True)) == count_params(
        config.replace(scan_layers=False)
    )
    assert reconcile(config.replace(scan_layers=True)) == reconcile(
        config.replace(scan_layers=False)
    )
    shapes = {x.path: x.shape for x in stacked}
    assert shapes["blocks/attention/key"] == (3, 32, 2, 8)
    assert shapes["blocks/attention/value_up"] == (3, 4, 8, 32)


def test_per_head_circuits_read_the_stacked_layers():
    unrolled, scanned = models(DECODER, seed=5)
    np.testing.assert_array_equal(qk_circuit(scanned, -1).left, qk_circuit(unrolled, 2).left)
    np.testing.assert_array_equal(
        layer_block(scanned.blocks, 1).attention.value_up[...],
        unrolled.blocks[1].attention.value_up[...],
    )
    a, b = circuit_spectra(unrolled), circuit_spectra(scanned)
    assert b["qk"].shape == (3, 4, 8)
    np.testing.assert_allclose(a["ov"], b["ov"], rtol=1e-5)
    with pytest.raises(ValueError, match="layer=3 is out of range"):
        scanned.block(3)


def test_decoder_patterns_on_the_scanned_model(key):
    unrolled, scanned = models(DECODER, seed=6)
    ids = jax.random.randint(key, (2, 6), 0, DECODER.vocab_size)
    mask = np.array([[1] * 6, [1] * 4 + [0] * 2], bool)
    a, b = decoder_patterns(unrolled, ids, mask=mask), decoder_patterns(scanned, ids, mask=mask)
    assert b.patterns.shape == (3, 2, 4, 6, 6) and b.num_layers == 3
    np.testing.assert_allclose(a.patterns, b.patterns, rtol=1e-5, atol=1e-6)


# ---- decoding --------------------------------------------------------------------------------


def test_kv_cache_decoding_token_by_token_equals_the_full_pass(key):
    unrolled, scanned = models(DECODER, seed=7)
    tokens = jax.random.randint(key, (2, 9), 0, DECODER.vocab_size)
    full = jitted(lambda m: m(tokens), scanned)
    cache = scanned.init_cache(2, 12)
    assert cache.key.shape == (3, 2, 12, 2, 8) and cache.length.shape == (3,)
    decode = nnx.jit(lambda m, t, c: m.decode(t, c))
    logits, cache = decode(scanned, tokens[:, :3], cache)  # a prompt, then one token at a time
    steps = [logits]
    for t in range(3, 9):
        logits, cache = decode(scanned, tokens[:, t : t + 1], cache)
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, 1), full, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(cache.length, [9, 9, 9])
    with pytest.raises(ValueError, match="cache overflow"):
        scanned.decode(tokens[:, :4], cache)
    with pytest.raises(ValueError, match="stacked on a leading L axis"):
        scanned.decode(tokens[:, :1], unrolled.init_cache(2, 12))
    with pytest.raises(ValueError, match="one KVCache per layer"):
        unrolled.decode(tokens[:, :1], scanned.init_cache(2, 12))
    out_u, logits_u = greedy_generate(unrolled, tokens[:, :4], 5)
    out_s, logits_s = greedy_generate(scanned, tokens[:, :4], 5)
    np.testing.assert_array_equal(out_u, out_s)
    np.testing.assert_allclose(logits_u, logits_s, rtol=1e-5, atol=1e-5)


# ---- sharding, checkpoints, pretrained -------------------------------------------------------


@pytest.mark.parametrize(
    "path, shape, spec",
    [
        ("blocks/attention/query", (3, 16, 4, 4), P(None, None, "model", None)),
        ("blocks/attention/value_up", (3, 4, 4, 16), P(None, "model", None, None)),
        ("blocks/mlp/up/kernel", (3, 16, 64), P(None, None, "model")),
        ("blocks/mlp/down/kernel", (3, 64, 16), P(None, "model", None)),
        ("opt_state/0/mu/blocks/mlp/up/bias", (3, 64), P(None, "model")),
        ("blocks/attention_norm/scale", (3, 16), P()),
        ("blocks/attention/key", (3, 16, 2, 4), P()),  # 2 kv heads do not split 4 ways
    ],
)
def test_stacked_partition_rules_keep_the_layer_axis_whole(path, shape, spec):
    assert partition_spec(path, shape, model_size=4) == spec


SHARDED_SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    from flax import nnx
    assert jax.device_count() == 8, jax.devices()
    from attnjax.data import make_task
    from attnjax.models import ModelConfig
    from attnjax.models.scan import unstack_layers
    from attnjax.training import sharding
    from attnjax.training.state import init_model, init_train_state, make_optimizer
    from attnjax.training.step import make_train_step

    config = ModelConfig(vocab_size=16, max_seq_len=11, model_dim=16, num_layers=3,
                         num_heads=4, mlp_dim=32)
    task = make_task("induction", seq_len=11, vocab_size=16, prefix_len=6, min_prefix_len=3)
    tx = make_optimizer(learning_rate=1e-2, steps=2, warmup_steps=1, weight_decay=0.1,
                        clip_norm=1.0)

    def run(scan, data, model):
        mesh = sharding.make_mesh(data, model)
        split = init_model(config.replace(scan_layers=scan), seed=0)
        state = init_train_state(split.params, tx)
        shardings = sharding.state_shardings(state, mesh)
        state = jax.device_put(state, shardings)
        step = make_train_step(split.graphdef, split.rest, tx, state_sharding=shardings)
        losses = []
        for i in range(2):
            state, metrics = step(state, sharding.shard_batch(task.batch(i, 8), mesh))
            losses.append(float(metrics["loss"]))
        return state, losses

    single, single_losses = run(False, 1, 1)
    scanned, scanned_losses = run(True, 2, 4)
    query = scanned.params["blocks"]["attention"]["query"][...]
    assert query.sharding.spec == jax.sharding.PartitionSpec(None, None, "model", None)
    assert query.addressable_shards[0].data.shape == (3, 16, 1, 4), query.addressable_shards[0]
    np.testing.assert_allclose(single_losses, scanned_losses, rtol=1e-5)
    flat = unstack_layers(nnx.to_pure_dict(scanned.params))
    for a, b in zip(jax.tree.leaves(nnx.to_pure_dict(single.params)), jax.tree.leaves(flat),
                    strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    print("OK", single_losses, scanned_losses)
    """
)


@pytest.mark.slow
def test_sharded_scanned_training_equals_unrolled_single_device():
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8"
    )
    result = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT], env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout


def test_checkpoint_round_trip_of_a_scanned_model(tmp_path, key):
    _, scanned = models(DECODER, seed=8)
    params = nnx.state(scanned, nnx.Param)
    state = {"step": jnp.asarray(4), "params": params}
    checkpointer = Checkpointer(tmp_path / "ckpt", every=1, keep=1)
    checkpointer.maybe_save(4, state)
    checkpointer.close()
    template = {
        "step": jnp.asarray(0),
        "params": nnx.state(
            DecoderLM(DECODER.replace(scan_layers=True), rngs=nnx.Rngs(1)), nnx.Param
        ),
    }
    restored = Checkpointer(tmp_path / "ckpt", every=1, keep=1).restore_latest(template)
    assert int(restored["step"]) == 4
    assert_trees_close(
        nnx.to_pure_dict(restored["params"]), nnx.to_pure_dict(params), rtol=0, atol=0
    )
    # The same weights, unstacked, run an unrolled model to the same logits.
    flat = params_from_tree(
        DECODER.replace(scan_layers=False), unstack_layers(nnx.to_pure_dict(restored["params"]))
    )
    tokens = jax.random.randint(key, (1, 7), 0, DECODER.vocab_size)
    np.testing.assert_allclose(flat(tokens), scanned(tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_minilm_loads_stacked_and_matches_transformers():
    reference = dict(np.load(FIXTURES / "minilm_reference.npz"))
    model, tokenizer = pretrained.load(scan_layers=True)
    assert model.blocks.attention.query.shape == (6, 384, 12, 32)
    encoded = pretrained.encode(model, tokenizer, list(reference["sentences"]))
    np.testing.assert_allclose(
        encoded.all_hidden_states, reference["hidden_states"], atol=1e-4, rtol=0
    )
    np.testing.assert_allclose(encoded.patterns, reference["patterns"], atol=1e-5, rtol=0)
    ours, theirs = encoded.sentence_embeddings, reference["sentence_embeddings"]
    assert (ours * theirs).sum(-1).min() > 0.9999  # both unit length (as test_pretrained)


def test_train_step_with_dropout_reseeds_stacked_streams():
    """The step reseeds every dropout stream from (seed, step): stacked streams get one key per
    layer. Same seed, same result; another seed, other masks."""
    config = ModelConfig(
        vocab_size=16, max_seq_len=11, model_dim=16, num_layers=2, num_heads=2, mlp_dim=32,
        dropout_rate=0.2, scan_layers=True,
    )  # fmt: skip
    task = make_task("induction", seq_len=11, vocab_size=16, prefix_len=6, min_prefix_len=3)
    tx = make_optimizer(
        learning_rate=1e-2, steps=2, warmup_steps=1, weight_decay=0.0, clip_norm=1.0
    )
    batch = task.batch(0, 4)

    def loss(seed):
        split = init_model(config, seed=0)
        step = make_train_step(split.graphdef, split.rest, tx, dropout_seed=seed)
        return float(step(init_train_state(split.params, tx), batch)[1]["loss"])

    first, again, other = loss(1), loss(1), loss(2)
    assert np.isfinite(first) and first == again and first != other


def test_attention_only_scanned_equals_unrolled_values_and_gradients(key):
    config = ModelConfig(
        vocab_size=24, max_seq_len=12, model_dim=16, num_layers=2, num_heads=2,
        attention_only=True,
    )  # fmt: skip
    unrolled, scanned = models(config, seed=9)
    assert "mlp" not in nnx.to_pure_dict(nnx.state(scanned.blocks, nnx.Param))
    assert scanned.blocks.mlp is None and scanned.blocks.mlp_norm is None
    tokens = jax.random.randint(key, (2, 12), 0, config.vocab_size)
    run = lambda m: m(tokens, capture=("resid_mid", "resid_post"))
    (a, a_cache), (b, b_cache) = jitted(run, unrolled), jitted(run, scanned)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert_trees_close(a_cache, b_cache, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(b_cache["resid_mid"], b_cache["resid_post"])
    loss = lambda m: jnp.sum(jnp.sin(m(tokens)))
    assert_trees_close(grads(unrolled, loss), grads(scanned, loss), rtol=1e-4, atol=1e-5)


def test_checkpoint_round_trip_of_an_attention_only_model(tmp_path, key):
    config = ModelConfig(
        vocab_size=24, max_seq_len=12, model_dim=16, num_layers=2, num_heads=2,
        attention_only=True, scan_layers=True,
    )  # fmt: skip
    _, scanned = models(config, seed=10)
    checkpointer = Checkpointer(tmp_path / "ckpt", every=1, keep=1)
    checkpointer.maybe_save(1, {"params": nnx.state(scanned, nnx.Param)})
    checkpointer.close()
    template = {"params": nnx.state(DecoderLM(config, rngs=nnx.Rngs(1)), nnx.Param)}
    restored = Checkpointer(tmp_path / "ckpt", every=1, keep=1).restore_latest(template)
    tree = nnx.to_pure_dict(restored["params"])
    assert set(tree["blocks"]) == {"attention", "attention_norm"}
    flat = params_from_tree(config.replace(scan_layers=False), unstack_layers(tree))
    tokens = jax.random.randint(key, (1, 12), 0, config.vocab_size)
    np.testing.assert_allclose(flat(tokens), scanned(tokens), rtol=1e-5, atol=1e-5)
