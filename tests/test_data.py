"""Tasks: determinism in (seed, step), answers checked against hand-written references."""

import jaxtyping
import numpy as np
import pytest

from attnjax.data import make_task


def _all_batches_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    "name, params",
    [
        ("recall", dict(seq_len=23, vocab_size=32, num_pairs=8, num_queries=4)),
        ("induction", dict(seq_len=23, vocab_size=32, prefix_len=12, min_prefix_len=6)),
        ("copy", dict(seq_len=20, vocab_size=16, length=9)),
        ("reverse", dict(seq_len=20, vocab_size=16, length=9)),
    ],
)
def test_batches_are_a_pure_function_of_seed_and_step(name, params):
    task = make_task(name, seed=3, **params)
    again = make_task(name, seed=3, **params)
    batch = task.batch(7, 5)
    assert _all_batches_equal(batch, again.batch(7, 5))
    assert not np.array_equal(batch.inputs, task.batch(8, 5).inputs)
    assert not np.array_equal(batch.inputs, make_task(name, seed=4, **params).batch(7, 5).inputs)
    assert batch.inputs.shape == batch.targets.shape == batch.loss_mask.shape == (5, task.seq_len)
    assert batch.inputs.dtype == batch.targets.dtype == np.int32
    assert batch.inputs.max() < task.vocab_size and batch.inputs.min() >= 0
    # targets are the inputs shifted by one
    np.testing.assert_array_equal(batch.targets[:, :-1], batch.inputs[:, 1:])
    assert batch.loss_mask.sum() > 0


def test_recall_answers_are_the_values_of_the_queried_keys():
    task = make_task("recall", seq_len=23, vocab_size=32, num_pairs=8, num_queries=4, seed=1)
    batch = task.batch(0, 16)
    for inputs, targets, mask in zip(*batch, strict=True):
        pairs = {int(inputs[2 * i]): int(inputs[2 * i + 1]) for i in range(8)}
        assert len(pairs) == 8  # keys are distinct
        answer_positions = np.flatnonzero(mask)
        assert len(answer_positions) == 4
        for t in answer_positions:
            assert targets[t] == pairs[int(inputs[t])]


def test_induction_answers_repeat_the_prefix_with_varying_lengths():
    task = make_task("induction", seq_len=23, vocab_size=32, prefix_len=12, min_prefix_len=6)
    batch = task.batch(5, 64)
    lengths = set()
    for inputs, targets, mask in zip(*batch, strict=True):
        positions = np.flatnonzero(mask)
        length = positions[0]  # first answer: input is the repeated first token
        lengths.add(int(length))
        assert len(positions) == length - 1
        for t in positions:
            assert targets[t] == inputs[t - length + 1]
    assert min(lengths) >= 6 and max(lengths) <= 12 and len(lengths) > 3


@pytest.mark.parametrize("reverse", [False, True])
def test_copy_and_reverse(reverse):
    task = make_task("reverse" if reverse else "copy", seq_len=20, vocab_size=16, length=9)
    inputs, targets, mask = task.batch(2, 4)
    source = inputs[:, :9]
    expected = source[:, ::-1] if reverse else source
    np.testing.assert_array_equal(targets[mask > 0].reshape(4, 9), expected)
    assert (inputs[:, 9] == 1).all()  # separator


def test_char_lm_windows_come_from_the_file(tmp_path):
    text = "the quick brown fox jumps over the lazy dog. " * 5
    path = tmp_path / "text.txt"
    path.write_text(text)
    task = make_task("char", path=str(path), seq_len=16, seed=0)
    assert task.vocab_size == len(set(text)) + 1
    inputs, targets, mask = task.batch(0, 3)
    for row_in, row_t in zip(inputs, targets, strict=True):
        assert task.decode(row_in) in text
        assert task.decode(np.concatenate([row_in, row_t[-1:]])) in text
    assert task.decode(task.encode("lazy dog")) == "lazy dog"
    assert mask.all()


@pytest.mark.parametrize(
    "name, params, field",
    [
        ("recall", dict(seq_len=10, num_pairs=8, num_queries=4), "task.seq_len"),
        ("recall", dict(vocab_size=16, num_pairs=9), "task.num_pairs"),
        ("recall", dict(num_pairs=3, num_queries=4), "task.num_queries"),
        ("induction", dict(seq_len=10, prefix_len=8), "task.prefix_len"),
        ("induction", dict(prefix_len=8, min_prefix_len=9), "task.min_prefix_len"),
        ("induction", dict(seq_len=5, prefix_len=1), "task.prefix_len"),
        ("induction", dict(prefix_len=4, min_prefix_len=1), "task.min_prefix_len"),
        ("copy", dict(seq_len=10, length=6), "task.length"),
        ("recall", dict(num_pair=3), "num_pairs"),
        ("recal", dict(), "task.name"),
        ("char", dict(path="/nonexistent/file.txt"), "task.path"),
    ],
)
def test_bad_task_parameters_name_the_field(name, params, field):
    with pytest.raises((ValueError, FileNotFoundError), match=field.replace(".", r"\.")):
        make_task(name, **params)


def test_shortest_induction_prefix_leaves_an_answer_in_every_row():
    task = make_task("induction", seq_len=9, vocab_size=8, prefix_len=5, min_prefix_len=2)
    assert (task.batch(3, 256).loss_mask.sum(axis=1) >= 1).all()


def test_char_task_names_the_path_of_a_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e ".encode("latin-1") * 20)
    with pytest.raises(ValueError, match=r"task\.path=.*latin1\.txt.*UTF-8"):
        make_task("char", path=str(path), seq_len=16)


# ---- Zoology's MQAR ----------------------------------------------------------------------------

MQAR = dict(seq_len=32, vocab_size=64, num_pairs=4)


@pytest.mark.parametrize("random_non_queries", [False, True])
def test_mqar_is_a_pure_function_of_seed_and_step(random_non_queries):
    task = make_task("mqar", seed=3, random_non_queries=random_non_queries, **MQAR)
    batch = task.batch(7, 5)
    assert _all_batches_equal(batch, make_task("mqar", seed=3, **task_params(task)).batch(7, 5))
    assert not np.array_equal(batch.inputs, task.batch(8, 5).inputs)
    other_seed = make_task("mqar", **{**task_params(task), "seed": 4})
    assert not np.array_equal(batch.inputs, other_seed.batch(7, 5).inputs)
    assert batch.inputs.shape == batch.targets.shape == batch.loss_mask.shape == (5, 32)
    assert batch.inputs.dtype == batch.targets.dtype == np.int32
    assert batch.loss_mask.dtype == np.float32
    assert batch.inputs.min() >= 0 and batch.inputs.max() < 64


def task_params(task):
    return dict(
        seq_len=task.seq_len, vocab_size=task.vocab_size, num_pairs=task.num_pairs,
        power_a=task.power_a, random_non_queries=task.random_non_queries,
    )  # fmt: skip


@pytest.mark.parametrize("random_non_queries", [False, True])
def test_mqar_answers_are_the_values_paired_earlier_with_the_queried_key(random_non_queries):
    task = make_task("mqar", seed=1, random_non_queries=random_non_queries, **MQAR)
    n, context, half = 4, 8, 32
    for inputs, targets, mask in zip(*task.batch(0, 64), strict=True):
        inputs, targets = inputs.tolist(), targets.tolist()
        # An independent reading of the row, position by position.
        pairs = {}
        for t in range(0, context, 2):
            key, value = inputs[t], inputs[t + 1]
            assert 1 <= key < half <= value < 64
            pairs[key] = value
        assert len(pairs) == n and len(set(pairs.values())) == n  # distinct keys and values
        answers = [t for t in range(32) if mask[t] == 1.0]
        assert set(mask.tolist()) <= {0.0, 1.0} and len(answers) == n  # each key queried once
        assert sorted(inputs[t] for t in answers) == sorted(pairs)
        for t in answers:
            assert t >= context and (t - context) % 2 == 0
            assert targets[t] == pairs[inputs[t]]
        for t in range(32):
            if t not in answers:
                assert targets[t] == (inputs[t + 1] if t + 1 < 32 else targets[t])
            if not random_non_queries and t >= context and t not in answers:
                assert inputs[t] == 0  # Zoology's figure-2 filler


def test_mqar_query_gaps_lean_short_as_the_power_law_implies():
    """With power_a = 0.01 a gap g (in pairs after the context) has weight ~ 1/(g+1): the median
    gap is far shorter than under uniform placement (power_a = 1). A loose statistical bound."""
    params = dict(seq_len=64, vocab_size=128, num_pairs=4, seed=5)

    def gaps(power_a):
        batch = make_task("mqar", power_a=power_a, **params).batch(0, 2000)
        rows, positions = np.nonzero(batch.loss_mask)
        return (positions - 8) // 2

    short, uniform = gaps(0.01), gaps(1.0)
    assert short.min() >= 0 and max(short.max(), uniform.max()) <= (64 - 8) // 2 - 1
    assert np.median(short) < 0.6 * np.median(uniform)
    assert abs(np.median(uniform) - 13.5) < 2  # uniform over the 28 slots
    assert np.mean(short == 0) > 2 * np.mean(uniform == 0)  # the first slot is the likeliest
    task = make_task("mqar", **params)
    assert np.isclose(task.gap_weights.sum(), 1.0) and np.all(np.diff(task.gap_weights) < 0)


def test_mqar_figure2_defaults_and_bad_settings_name_the_field(monkeypatch):
    monkeypatch.setattr(jaxtyping.config, "jaxtyping_disable", True)  # as a user runs it
    task = make_task("mqar")
    assert (task.seq_len, task.vocab_size, task.num_pairs, task.power_a) == (64, 8192, 4, 0.01)
    assert not task.random_non_queries
    batch = task.batch(0, 4)
    keys, values = batch.inputs[:, 0:8:2], batch.inputs[:, 1:8:2]
    assert keys.min() >= 1 and keys.max() < 4096 <= values.min() and values.max() < 8192
    bad = [
        (dict(num_pairs=5, seq_len=16, vocab_size=64), "task.seq_len"),  # 4 * 5 > 16
        (dict(num_pairs=8, seq_len=64, vocab_size=16), r"task.num_pairs=8 exceeds the 7"),
        (dict(seq_len=15, vocab_size=64), "task.seq_len"),  # odd
        (dict(power_a=0.0), "task.power_a"),
        (dict(power_a=-1.0), "task.power_a"),
        (dict(random_non_queries="yes"), "task.random_non_queries"),
        (dict(num_pairs=0), "task.num_pairs"),
        (dict(num_kv_pairs=4), "task.num_kv_pairs"),
    ]
    assert make_task("mqar", seq_len=64, vocab_size=64).batch(0, 2).inputs.max() < 64
    for params, field in bad:
        with pytest.raises(ValueError, match=field.replace(".", r"\.")):
            make_task("mqar", **params)
