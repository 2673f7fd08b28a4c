"""attnjax.analysis against float64 NumPy loops, explicit dense products and hand-built patterns."""

import types

import jax
import numpy as np
import pytest
from flax import nnx

from attnjax.analysis import (
    AttentionPatterns,
    FactoredCircuit,
    attention_module,
    circuit_spectra,
    contextual_similarity,
    cosine_similarity_by_layer,
    decoder_patterns,
    effective_rank,
    encoder_patterns,
    find_word,
    first_token_score,
    head_entropy,
    head_scores,
    induction_score_from_patterns,
    induction_scores,
    ov_circuit,
    previous_token_score,
    qk_circuit,
    repeated_random_tokens,
    self_score,
    threshold_rank,
    word_focus,
    word_in_context,
    word_vectors,
)
from attnjax.models import DecoderLM, ModelConfig

TINY = dict(vocab_size=40, max_seq_len=16, model_dim=16, num_layers=2, num_heads=4)


def random_patterns(rng, lengths, layers=2, heads=3, causal=False):
    """Rows that sum to 1 over each example's real keys (and causal keys), [L,B,N,T,T];
    padded query rows get random garbage that scores must ignore."""
    batch, size = len(lengths), max(lengths)
    mask = np.arange(size)[None] < np.asarray(lengths)[:, None]
    logits = rng.normal(size=(layers, batch, heads, size, size)) * 2.0
    allowed = np.broadcast_to(mask[None, :, None, None, :], logits.shape).copy()
    if causal:
        allowed &= np.tril(np.ones((size, size), bool))
    weights = np.where(allowed, np.exp(logits), 0.0)
    patterns = weights / weights.sum(-1, keepdims=True)
    padded_query = ~mask[None, :, None, :, None]
    patterns = np.where(padded_query, rng.uniform(size=logits.shape), patterns)
    return patterns.astype(np.float32), mask


def numpy_scores(patterns, mask):
    """Entropy, previous, first and self scores [L, N] by explicit loops in float64."""
    p = patterns.astype(np.float64)
    layers, batch, heads, size, _ = p.shape
    out = {name: np.zeros((layers, heads)) for name in ("entropy", "prev", "first", "self")}
    for layer in range(layers):
        for head in range(heads):
            sums = dict.fromkeys(out, 0.0)
            count = prev_count = 0
            for b in range(batch):
                for t in range(size):
                    if not mask[b, t]:
                        continue
                    row = p[layer, b, head, t]
                    sums["entropy"] -= sum(
                        row[s] * np.log(row[s]) for s in range(size) if mask[b, s] and row[s] > 0
                    )
                    sums["first"] += row[0]
                    sums["self"] += row[t]
                    count += 1
                    if t >= 1:
                        sums["prev"] += row[t - 1]
                        prev_count += 1
            for name in ("entropy", "first", "self"):
                out[name][layer, head] = sums[name] / count
            out["prev"][layer, head] = sums["prev"] / prev_count
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_head_scores_match_numpy_loops(key, causal):
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**30)))
    patterns, mask = random_patterns(rng, lengths=[7, 5, 2], causal=causal)
    expected = numpy_scores(patterns, mask)
    for name, fn in (
        ("entropy", head_entropy),
        ("prev", previous_token_score),
        ("first", first_token_score),
        ("self", self_score),
    ):
        np.testing.assert_allclose(fn(patterns, mask), expected[name], rtol=1e-5, atol=1e-6)
    tokens = [[f"t{i}" for i in range(n)] for n in (7, 5, 2)]
    scores = head_scores(AttentionPatterns(patterns, tokens, mask, causal))
    np.testing.assert_allclose(scores.entropy, expected["entropy"], rtol=1e-5)
    np.testing.assert_allclose(scores.self_token, expected["self"], rtol=1e-5)
    layer, head, value = scores.top_heads("first_token", k=1)[0]
    assert value == pytest.approx(expected["first"].max(), rel=1e-5)
    assert expected["first"][layer, head] == expected["first"].max()


def test_entropy_of_one_hot_and_uniform_rows():
    size = 6
    one_hot = np.tile(np.eye(size, dtype=np.float32), (1, 1, 1, 1, 1))
    uniform = np.full((1, 1, 1, size, size), 1.0 / size, np.float32)
    np.testing.assert_allclose(head_entropy(one_hot), [[0.0]], atol=1e-7)
    np.testing.assert_allclose(head_entropy(uniform), [[np.log(size)]], rtol=1e-6)
    with pytest.raises((ValueError, TypeError), match="mask"):  # jaxtyping under pytest
        head_entropy(uniform, np.ones((2, size), bool))


def test_induction_score_of_exact_induction_and_uniform_patterns():
    n = 5
    size = 2 * n
    exact = np.zeros((1, 2, 1, size, size), np.float32)
    exact[..., 0, 0] = 1.0
    for t in range(1, size):  # first half: attend anywhere causal; second: the induction target
        exact[..., t, t - n + 1 if t >= n else t - 1] = 1.0
    np.testing.assert_allclose(induction_score_from_patterns(exact, n), [[1.0]], rtol=1e-6)
    uniform = np.tril(np.ones((size, size))) / np.arange(1, size + 1)[:, None]
    expected = np.mean([1.0 / (t + 1) for t in range(n, 2 * n)])
    uniform = np.broadcast_to(uniform, (2, 1, 3, size, size)).astype(np.float32)
    np.testing.assert_allclose(induction_score_from_patterns(uniform, n), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="seq_len"):
        induction_score_from_patterns(uniform, n + 1)


def test_induction_scores_of_a_decoder_match_a_loop_over_its_patterns():
    model = DecoderLM(ModelConfig(**TINY), rngs=nnx.Rngs(1))
    n, batch, seed = 6, 3, 7
    tokens = np.asarray(repeated_random_tokens(TINY["vocab_size"], n, batch, seed))
    assert tokens.shape == (batch, 2 * n) and (tokens[:, :n] == tokens[:, n:]).all()
    assert tokens.max() < TINY["vocab_size"] and len(np.unique(tokens)) > 3
    _, patterns = model(tokens, return_patterns=True)
    patterns = np.asarray(patterns, np.float64)
    expected = np.zeros((2, 4))
    for t in range(n, 2 * n):
        expected += patterns[:, :, :, t, t - n + 1].mean(axis=1) / n
    scores = induction_scores(model, seq_len=n, batch=batch, seed=seed)
    assert scores.shape == (2, 4)
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    with pytest.raises(ValueError, match="max_seq_len"):
        induction_scores(model, seq_len=9)


def test_decoder_patterns_bundle_tokens_and_mask(key):
    model = DecoderLM(ModelConfig(**TINY), rngs=nnx.Rngs(2))
    ids = jax.random.randint(key, (2, 6), 0, TINY["vocab_size"])
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]], bool)
    result = decoder_patterns(model, ids, mask=mask)
    assert result.patterns.shape == (2, 2, 4, 6, 6) and result.causal
    assert result.tokens[1] == tuple(str(int(i)) for i in np.asarray(ids)[1, :4])
    patterns = np.asarray(result.patterns)
    assert np.all(patterns[:, 1, :, :, 4:] == 0.0)  # padded keys get nothing
    assert np.all(np.triu(patterns[:, 0], k=1) == 0.0)  # causal
    np.testing.assert_allclose(patterns.sum(-1), 1.0, rtol=1e-5)
    assert result.example(1).shape == (2, 4, 4, 4)
    np.testing.assert_array_equal(result.cell_mask(1), np.tril(np.ones((4, 4), bool)))
    with pytest.raises(ValueError, match="tokens"):
        AttentionPatterns(result.patterns, [["a"], ["b"]], mask, True)
    with pytest.raises(ValueError, match="mask"):
        AttentionPatterns(result.patterns, result.tokens, mask[:, ::-1], True)


@pytest.mark.parametrize("kv_heads,value_dim", [(4, None), (2, 3)])
def test_circuits_match_dense_products_and_numpy_svd(kv_heads, value_dim):
    config = ModelConfig(**TINY, num_kv_heads=kv_heads, value_dim=value_dim, init_std=0.5)
    model = DecoderLM(config, rngs=nnx.Rngs(3))
    layer = 1
    attention = model.blocks[layer].attention
    w_q, w_k = np.asarray(attention.query[...], np.float64), np.asarray(attention.key[...])
    w_down = np.asarray(attention.value_down[...], np.float64)
    w_up = np.asarray(attention.value_up[...], np.float64)
    group = 4 // kv_heads
    for circuit, dense_of_head, rank in (
        (qk_circuit(model, layer), lambda n: w_q[:, n] @ w_k[:, n // group].T, 4),
        (ov_circuit(model, layer), lambda n: w_down[:, n // group] @ w_up[n], value_dim or 4),
    ):
        assert circuit.num_heads == 4
        u, s, vt = (np.asarray(x, np.float64) for x in circuit.svd())
        assert s.shape == (4, rank)
        for n in range(4):
            dense = dense_of_head(n)
            np.testing.assert_allclose(circuit.dense()[n], dense, rtol=1e-5, atol=1e-6)
            expected = np.linalg.svd(dense, compute_uv=False)
            np.testing.assert_allclose(s[n], expected[:rank], rtol=1e-4)
            assert np.all(expected[rank:] < 1e-5 * expected[0])  # rank <= H (or R)
            np.testing.assert_allclose((u[n] * s[n]) @ vt[n], dense, atol=1e-5)
            p = expected[:rank] / expected[:rank].sum()
            entropy_rank = np.exp(-(p * np.log(p)).sum())
            np.testing.assert_allclose(circuit.effective_rank()[n], entropy_rank, rtol=1e-4)
    spectra = circuit_spectra(model)
    assert spectra["qk"].shape == (2, 4, 4) and spectra["ov"].shape == (2, 4, value_dim or 4)
    np.testing.assert_allclose(spectra["ov"][layer], ov_circuit(model, layer).singular_values())


def test_effective_and_threshold_rank_of_known_spectra():
    spectra = np.array([[3.0, 0.0, 0.0], [2.0, 2.0, 2.0], [1.0, 0.5, 0.001], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(effective_rank(spectra)[:2], [1.0, 3.0], rtol=1e-6)
    p = spectra[2] / spectra[2].sum()
    np.testing.assert_allclose(effective_rank(spectra)[2], np.exp(-(p * np.log(p)).sum()))
    assert effective_rank(spectra)[3] == 0.0
    np.testing.assert_array_equal(threshold_rank(spectra), [1, 3, 2, 0])
    np.testing.assert_array_equal(threshold_rank(spectra, rtol=0.0), [1, 3, 3, 0])
    with pytest.raises(ValueError, match="rtol"):
        threshold_rank(spectra, rtol=1.5)
    # A circuit built from known factors: a rank-2 map with singular values 4 and 1.
    left = np.zeros((1, 5, 3), np.float32)
    right = np.zeros((1, 3, 5), np.float32)
    left[0, 0, 0], left[0, 1, 1] = 2.0, 1.0
    right[0, 0, 2], right[0, 1, 3] = 2.0, 1.0
    np.testing.assert_allclose(
        FactoredCircuit(left, right).singular_values()[0], [4.0, 1.0, 0.0], atol=1e-6
    )


def test_attention_module_names_bad_layers():
    model = DecoderLM(ModelConfig(**TINY), rngs=nnx.Rngs(0))
    assert attention_module(model, -1) is model.blocks[1].attention
    assert attention_module(model.blocks[0].attention) is model.blocks[0].attention
    with pytest.raises(ValueError, match="layer=2"):
        qk_circuit(model, 2)
    with pytest.raises(ValueError, match="blocks"):
        attention_module(object(), 0)


def test_find_word_handles_pieces_and_whole_words():
    wordpiece = ["[CLS]", "take", "a", "bio", "##psy", "of", "the", "mole", "[SEP]"]
    assert find_word(wordpiece, "mole") == [7]
    assert find_word(wordpiece, "Biopsy") == [3, 4]
    assert find_word(wordpiece, "bio") == []  # a piece is not the word
    assert find_word(["[CLS]", "mole", "##s", "mole", "[SEP]"], "mole") == [3]
    assert find_word(["[CLS]", "mole", "x", "mole"], "mole", occurrence=1) == [3]
    gpt2 = ["The", "Ġmole", "cule", "Ġand", "Ġthe", "Ġmole", ",", "Ġbi", "opsy"]
    assert find_word(gpt2, "mole") == [5]
    assert find_word(gpt2, "molecule") == [1, 2]
    assert find_word(gpt2, "biopsy") == [7, 8]
    with pytest.raises(ValueError, match="word"):
        find_word(gpt2, " ")


def test_contextual_similarity_matches_numpy(key):
    tokens = [
        ["[CLS]", "american", "sh", "##rew", "mole", "[SEP]", "[PAD]"],
        ["[CLS]", "one", "mole", "of", "carbon", "dioxide", "[SEP]"],
        ["[CLS]", "a", "mole", "##s", "mole", "[SEP]", "[PAD]"],
    ]
    states = np.asarray(jax.random.normal(key, (4, 3, 7, 8)), np.float64)
    encoded = types.SimpleNamespace(tokens=tokens, all_hidden_states=states.astype(np.float32))
    result = contextual_similarity(encoded, "mole")
    assert result.positions == ((4,), (2,), (4,))
    vectors = np.stack([states[:, 0, 4], states[:, 1, 2], states[:, 2, 4]], axis=1)
    expected = np.zeros((4, 3, 3))
    for layer in range(4):
        for i in range(3):
            for j in range(3):
                a, b = vectors[layer, i], vectors[layer, j]
                expected[layer, i, j] = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    np.testing.assert_allclose(result.similarity, expected, rtol=1e-5, atol=1e-6)
    off = [expected[:, 0, 1], expected[:, 0, 2], expected[:, 1, 2]]
    np.testing.assert_allclose(result.mean_between_sentences(), np.mean(off, axis=0), rtol=1e-5)
    shrew = word_vectors(states, [[2, 3], [4], [1]])
    np.testing.assert_allclose(shrew[:, 0], states[:, 0, 2:4].mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(cosine_similarity_by_layer(vectors)[:, 1, 1], np.ones(4), rtol=1e-6)
    with pytest.raises(ValueError, match=r"'carbon' is not in sentence 0 'American shrew mole'"):
        contextual_similarity(encoded, "carbon", sentences=["American shrew mole", "x", "y"])


def test_word_focus_averages_pieces_and_ranks_tokens_and_heads():
    rng = np.random.default_rng(5)
    tokens = [["[CLS]", "take", "a", "bio", "##psy", "[SEP]"], ["[CLS]", "bio", "##psy", "[SEP]"]]
    patterns, mask = random_patterns(rng, lengths=[6, 4], layers=2, heads=3)
    result = AttentionPatterns(patterns, tokens, mask, causal=False)
    focus = word_focus(result, 0, [3, 4])
    expected = patterns[:, 0, :, 3:5, :6].astype(np.float64).mean(axis=2)  # [L, N, n]
    np.testing.assert_allclose(focus.rows, expected, rtol=1e-6)
    mean = expected[1].mean(axis=0)
    best = int(np.argmax(mean))
    assert focus.top_tokens(1, k=1) == [(tokens[0][best], pytest.approx(mean[best], rel=1e-6))]
    others = [1, 2]  # "take", "a": not special, not the word's own pieces
    head, token, weight = focus.top_heads(1, k=1)[0]
    assert weight == pytest.approx(expected[1][:, others].max(), rel=1e-6)
    assert token == tokens[0][others[int(np.argmax(expected[1][head, others]))]]
    assert word_focus(result, 1, [1, 2]).top_heads(0) == []  # nothing else to look at
    with pytest.raises(ValueError, match="positions"):
        word_focus(result, 1, [5])


def test_encoder_patterns_and_circuits_of_a_bert_layout_encoder(key):
    from attnjax.models.encoder import Encoder, bert_config

    model = Encoder(bert_config(**TINY), rngs=nnx.Rngs(4))
    ids = jax.random.randint(key, (2, 5), 0, TINY["vocab_size"])
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
    result = encoder_patterns(model, ids, tokens=[list("abcde"), list("fgh")], mask=mask)
    assert not result.causal and result.tokens[1] == ("f", "g", "h")
    patterns = np.asarray(result.patterns)
    assert np.all(patterns[:, 1, :, :, 3:] == 0.0) and np.all(patterns[:, 0] > 0.0)
    np.testing.assert_allclose(patterns.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(result.cell_mask(1), np.ones((3, 3), bool))
    w_q = np.asarray(model.blocks[0].attention.query[...], np.float64)
    w_k = np.asarray(model.blocks[0].attention.key[...], np.float64)
    np.testing.assert_allclose(qk_circuit(model, 0).dense()[2], w_q[:, 2] @ w_k[:, 2].T, atol=1e-7)


MOLE = ["American shrew mole", "One mole of carbon dioxide", "Take a biopsy of the mole"]


def test_word_in_context_on_real_minilm_matches_numpy():
    from attnjax import pretrained

    model, tokenizer = pretrained.load()
    result = word_in_context(model, tokenizer, MOLE, "mole")
    encoded = pretrained.encode(model, tokenizer, MOLE)
    assert result.patterns.patterns.shape == (6, 3, 12, 9, 9) and not result.patterns.causal
    assert result.patterns.tokens[0] == ("[CLS]", "american", "sh", "##rew", "mole", "[SEP]")
    assert result.similarity.positions == ((4,), (2,), (7,))
    states = np.asarray(encoded.all_hidden_states, np.float64)  # [7, 3, T, 384]
    vectors = states[:, [0, 1, 2], [4, 2, 7]]  # [7, 3, 384]
    unit = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
    expected = np.einsum("lsd,lud->lsu", unit, unit)
    np.testing.assert_allclose(result.similarity.similarity, expected, atol=1e-5)
    np.testing.assert_allclose(result.focus[1].rows, encoded.patterns[:, 1, :, 2, :7], rtol=1e-6)
    # MiniLM's layer 0 head 2 attends to the previous token (a property of the real weights).
    scores = head_scores(result.patterns)
    assert scores.top_heads("previous_token", k=1)[0][:2] == (0, 2)
    assert scores.previous_token[0, 2] > 0.99
    summary = result.summary()
    assert summary.count("layer 5: mean over heads") == 3 and "s0 vs s2" in summary
    with pytest.raises(ValueError, match="'shrew' is not in sentence 1 'One mole of carbon"):
        word_in_context(model, tokenizer, MOLE, "shrew")
