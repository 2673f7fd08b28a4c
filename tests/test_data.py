"""Tasks: determinism in (seed, step), answers checked against hand-written references."""

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
