"""attnjax.training.sweep_stats: intervals against a t table and a coverage check, the learning
rate chosen on validation (not test), ties, diverged cells, CSV round trips, the printed table."""

import csv
import io
import math
import zlib

import numpy as np
import pytest

from attnjax.training import sweep as sweep_lib
from attnjax.training import sweep_stats as stats

# Two-sided 95% critical values of Student's t, NIST/SEMATECH e-Handbook of Statistical Methods,
# section 1.3.6.7.2 ("Critical values of the Student's t distribution"), column 0.975.
T_TABLE = {2: 4.303, 4: 2.776}


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def replica(rng, heads, layers, seed, lr, status="ok", variant="", **metrics):
    """One replica row with fresh random metrics (overridden by ``metrics``)."""
    row = dict(
        heads=heads, layers=layers, variant=variant, model_dim=64, head_dim=64 // heads,
        params_total=1000 * layers + heads, params_attention=400 * layers, params_per_head=100,
        seed=seed, lr=lr, status=status, reason="" if status == "ok" else f"{status} at step 7",
        final_loss=rng.uniform(0.1, 2), val_loss=rng.uniform(0.1, 2),
        val_accuracy=rng.uniform(), val_sequence_accuracy=rng.uniform(),
        eval_loss=rng.uniform(0.1, 2), accuracy=rng.uniform(), sequence_accuracy=rng.uniform(),
        phase_change_step=int(rng.integers(100, 900)), best_induction=rng.uniform(),
        tokens_per_s=rng.uniform(1e3, 1e4), compile_s=rng.uniform(1, 3), wall_s=rng.uniform(5, 9),
        diverged_step=None,
    )  # fmt: skip
    if status != "ok":
        row.update({m: None for m in stats.METRICS}, diverged_step=7)
    row.update(metrics)
    return row


def csv_round_trip(rows, columns):
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return list(csv.DictReader(io.StringIO(text.getvalue())))


# ---- t_interval ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 5])
def test_interval_matches_a_t_table_and_float64_numpy(rng, n):
    values = rng.normal(0.7, 0.1, size=n)
    mean = values.sum(dtype=np.float64) / n
    std = math.sqrt(((values - mean) ** 2).sum() / (n - 1))
    summary = stats.t_interval(values.tolist())
    assert summary.n == n and summary.excluded == 0
    np.testing.assert_allclose(summary.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(summary.std, std, rtol=1e-12)
    np.testing.assert_allclose(summary.ci95, T_TABLE[n - 1] * std / math.sqrt(n), rtol=2e-4)


def test_interval_covers_the_true_mean_about_95_percent_of_the_time(rng):
    draws = rng.normal(3.0, 2.0, size=(2000, 4))
    covered = 0
    for values in draws:
        summary = stats.t_interval(values)
        covered += abs(summary.mean - 3.0) <= summary.ci95
    assert 0.93 <= covered / len(draws) <= 0.97


def test_interval_of_one_and_no_values_is_nan_not_zero(rng):
    one = stats.t_interval([rng.uniform()])
    assert one.n == 1 and math.isfinite(one.mean)
    assert math.isnan(one.std) and math.isnan(one.ci95)
    none = stats.t_interval([])
    assert none.n == 0 and all(math.isnan(v) for v in none[:3])


def test_interval_leaves_out_and_counts_non_finite_values_and_reads_strings(rng):
    values = rng.normal(size=3)
    summary = stats.t_interval([*values, math.nan, math.inf, None, ""])
    expected = stats.t_interval(values)
    assert summary.n == 3 and summary.excluded == 4
    assert summary[:4] == expected[:4]
    assert stats.t_interval([str(v) for v in values])[:4] == expected[:4]
    with pytest.raises(ValueError, match="confidence=1.5"):
        stats.t_interval(values, confidence=1.5)


# ---- best learning rate -------------------------------------------------------------------------


def test_best_lr_is_chosen_on_validation_not_test(rng):
    """lr 1e-3 is best on validation, 1e-2 on test: the choice follows validation."""
    rows = [
        replica(rng, 2, 2, seed, lr, val_accuracy=val + 0.01 * rng.uniform(),
                accuracy=test + 0.01 * rng.uniform())
        for seed in range(3)
        for lr, val, test in ((1e-3, 0.9, 0.5), (1e-2, 0.6, 0.95))
    ]  # fmt: skip
    choice = stats.best_learning_rate(rows)[(2, 2, "")]
    assert choice.lr == 1e-3 and choice.seeds == 3 and choice.failed == 0
    cells, by_lr = stats.aggregate(rows)
    assert cells[0]["best_lr"] == 1e-3
    reported = np.mean([r["accuracy"] for r in rows if r["lr"] == 1e-3])
    np.testing.assert_allclose(cells[0]["accuracy"], reported, rtol=1e-12)
    assert [r["selected"] for r in by_lr] == [True, False]
    # a loss is minimised: val_loss lowest at 1e-2
    for r in rows:
        r["val_loss"] = 1.0 if r["lr"] == 1e-3 else 0.5
    assert stats.best_learning_rate(rows, "val_loss")[(2, 2, "")].lr == 1e-2
    assert stats.aggregate(rows, select_metric="val_loss")[0][0]["best_lr"] == 1e-2


def test_best_lr_ties_go_to_the_smaller_lr(rng):
    scores = rng.uniform(size=3)
    rows = [
        replica(rng, 1, 1, seed, lr, val_accuracy=scores[seed])
        for lr in (3e-3, 1e-3, 1e-2)  # input order does not matter
        for seed in (2, 0, 1)
    ]
    assert stats.best_learning_rate(rows)[(1, 1, "")].lr == 1e-3


def test_best_lr_counts_only_ok_seeds_and_reports_failures(rng):
    rows = [replica(rng, 1, 2, s, 1e-3, val_accuracy=0.5) for s in range(3)]
    rows += [replica(rng, 1, 2, 0, 1e-2, val_accuracy=0.8)]  # one ok seed, the best score
    rows += [replica(rng, 1, 2, s, 1e-2, status="nan") for s in (1, 2)]
    choice = stats.best_learning_rate(rows)[(1, 2, "")]
    assert (choice.lr, choice.score, choice.seeds, choice.failed) == (1e-2, 0.8, 1, 2)
    cell = stats.aggregate(rows)[0][0]
    assert (cell["seeds"], cell["replicas"], cell["failed"], cell["status"]) == (1, 6, 2, "ok")
    assert cell["accuracy_std"] is None and cell["accuracy_ci95"] is None  # one seed
    assert cell["reason"].startswith("2 of 6 replicas not ok; first seed 1, lr 0.01: nan")


def test_a_cell_whose_every_replica_diverged(rng):
    rows = [replica(rng, 2, 1, s, lr, status="nan") for s in range(2) for lr in (1e-3, 1e-2)]
    rows[-1].update(status="oom", reason="RESOURCE_EXHAUSTED")
    rows += [replica(rng, 1, 1, s, 1e-3) for s in range(2)]
    assert stats.best_learning_rate(rows)[(2, 1, "")] is None
    cells, by_lr = stats.aggregate(rows)
    cell = next(c for c in cells if c["heads"] == 2)
    assert cell["best_lr"] is None and cell["status"] == "nan"  # the most common failure
    assert (cell["seeds"], cell["replicas"], cell["failed"]) == (0, 4, 4)
    assert all(cell[m] is None for m in stats.METRICS)
    assert cell["reason"].startswith("4 of 4 replicas not ok; first seed 0, lr 0.001: nan")
    assert not any(r["selected"] for r in by_lr if r["heads"] == 2)
    assert "2x1: 4 of 4 replicas not ok" in stats.format_cells(cells)


# ---- aggregate ----------------------------------------------------------------------------------


def grid(rng, seeds=3, lrs=(1e-3, 3e-3), variants=("",)):
    return [
        replica(rng, h, n, s, lr, variant=v)
        for n in (1, 2) for h in (1, 2) for v in variants for lr in lrs for s in range(seeds)
    ]  # fmt: skip


def test_aggregate_columns_order_and_statistics(rng):
    rows = grid(rng)
    rows[5].update(phase_change_step=None)  # this replica's induction score never crossed
    cells, by_lr = stats.aggregate(rows)
    assert [(c["layers"], c["heads"]) for c in cells] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert all(tuple(c) == stats.CELL_COLUMNS for c in cells)
    assert all(tuple(r) == stats.BY_LR_COLUMNS for r in by_lr)
    assert len(by_lr) == 8 and sum(r["selected"] for r in by_lr) == 4
    assert stats.CELL_COLUMNS[:3] == stats.BY_LR_COLUMNS[:3] == stats.REPLICA_COLUMNS[:3]
    assert set(sweep_lib.COLUMNS) <= set(stats.CELL_COLUMNS)  # old readers of results.csv
    for cell in cells:
        where = (cell["heads"], cell["layers"], cell["best_lr"])
        mine = [r for r in rows if (r["heads"], r["layers"], r["lr"]) == where]
        for metric in ("accuracy", "eval_loss", "best_induction"):
            expected = stats.t_interval([r[metric] for r in mine])
            assert (cell[metric], cell[f"{metric}_std"], cell[f"{metric}_ci95"]) == expected[:3]
        steps = [r["phase_change_step"] for r in mine if r["phase_change_step"] is not None]
        assert cell["phase_change_count"] == len(steps)
        np.testing.assert_allclose(cell["phase_change_step"], np.mean(steps), rtol=1e-12)
        assert (cell["seeds"], cell["replicas"], cell["failed"]) == (3, 6, 0)


def test_aggregate_reads_rows_back_from_csv(rng):
    rows = grid(rng, variants=("", "gqa"))
    rows[0].update(status="failed", reason="ValueError: bad", **{m: None for m in stats.METRICS})
    assert stats.aggregate(csv_round_trip(rows, stats.REPLICA_COLUMNS)) == stats.aggregate(rows)
    cells, _ = stats.aggregate(rows)
    text = stats.format_cells(cells)
    assert stats.format_cells(csv_round_trip(cells, stats.CELL_COLUMNS)) == text
    assert "variant" in text.splitlines()[0] and " gqa " in text


def test_aggregate_accepts_old_single_seed_rows(rng):
    old = [
        {k: v for k, v in replica(rng, h, 1, 0, 1e-3).items() if k in sweep_lib.COLUMNS}
        for h in (1, 2)
    ]
    cells, by_lr = stats.aggregate(old)
    assert [c["best_lr"] for c in cells] == [None, None]  # no lr recorded
    assert [c["accuracy"] for c in cells] == [r["accuracy"] for r in old]
    assert all(c["seeds"] == 1 and c["accuracy_ci95"] is None for c in cells)


# ---- formatting ---------------------------------------------------------------------------------


def test_format_cells_shows_mean_plus_minus_ci_and_the_footnote(rng):
    cells, _ = stats.aggregate(grid(rng))
    text = stats.format_cells(cells)
    header = text.splitlines()[0].split()
    assert header[:2] == ["heads", "layers"] and "variant" not in header
    cell = cells[0]
    assert f"{cell['accuracy']:.3f} ± {cell['accuracy_ci95']:.3f}" in text
    assert f"{cell['eval_loss']:.3f} ± {cell['eval_loss_ci95']:.3f}" in text
    assert f"({cell['phase_change_count']}/3)" in text
    assert "1 layer(s): mean accuracy" in text and "2 layer(s): mean accuracy" in text
    assert "95% Student-t interval of the mean over 3 seed(s)" in text.splitlines()[-1]
    assert "± ? with one seed" in text.splitlines()[-1]


def test_format_cells_with_one_seed_prints_a_question_mark_not_zero(rng):
    cells, _ = stats.aggregate(grid(rng, seeds=1, lrs=(1e-3,)))
    body = stats.format_cells(cells).splitlines()[2:6]
    assert all(f"{c['accuracy']:.3f} ± ?" in line for c, line in zip(cells, body, strict=True))
    assert "± 0.000" not in stats.format_cells(cells)


def test_format_cells_without_telemetry_has_no_phase_change_column(rng):
    rows = grid(rng)
    for r in rows:
        r.update(phase_change_step=None, best_induction=None)
    assert "phase change" not in stats.format_cells(stats.aggregate(rows)[0])


# ---- comparing cells ----------------------------------------------------------------------------


def test_compare_cells_is_welchs_t_test(rng):
    rows = [replica(rng, 2, 2, s, 1e-3, accuracy=0.9 + 0.01 * rng.normal()) for s in range(4)]
    rows += [replica(rng, 1, 2, s, 1e-3, accuracy=0.5 + 0.05 * rng.normal()) for s in range(5)]
    a, b = stats.best_replicas(rows, 2, 2), stats.best_replicas(rows, 1, 2)
    result = stats.compare_cells(a, b, "accuracy")
    x = np.array([r["accuracy"] for r in a])
    y = np.array([r["accuracy"] for r in b])
    # Welch's statistic and Welch-Satterthwaite degrees of freedom, written out
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    t = (x.mean() - y.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
    import scipy.stats

    np.testing.assert_allclose(result.p_value, 2 * scipy.stats.t.sf(abs(t), df), rtol=1e-10)
    assert (result.n_a, result.n_b) == (4, 5) and result.p_value < 1e-3
    assert math.isnan(stats.compare_cells(a[:1], b, "accuracy").p_value)
    with pytest.raises(ValueError, match="heads=3, layers=2"):
        stats.best_replicas(rows, 3, 2)
