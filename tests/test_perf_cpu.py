"""attnjax.perf.cpu: CPU tuning is an explicit opt-in. Importing attnjax or building a step
changes nothing in the process; ``tune()`` does what it says (checked with glibc's own
counters, in a subprocess); the launchers' ``--cpu_tune`` flag turns it off."""

import ctypes
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from attnjax.data import make_task
from attnjax.models import ModelConfig
from attnjax.perf import cpu
from attnjax.training import (
    init_model,
    init_train_state,
    make_eval_step,
    make_optimizer,
    make_train_step,
)

TINY_MODEL = ModelConfig(vocab_size=16, max_seq_len=11, model_dim=16, num_layers=1, num_heads=2)
GLIBC = cpu._glibc_mallopt() is not None


def _tiny_model_optimizer_batch():
    split = init_model(TINY_MODEL, seed=0)
    tx = make_optimizer(
        learning_rate=1e-2, steps=3, warmup_steps=1, weight_decay=0.0, clip_norm=1.0
    )
    return split, tx, make_task("induction", seq_len=11, vocab_size=16, prefix_len=6).batch(0, 4)


class _WatchedLibraries:
    """Stands in for ``ctypes.CDLL``: loads the real library, records every symbol asked of it."""

    def __init__(self):
        self.symbols = []

    def __call__(self, name, *args, **kwargs):
        library = _REAL_CDLL(name, *args, **kwargs)
        watcher = self

        class Watched:
            def __getattr__(self, symbol):
                watcher.symbols.append((name, symbol))
                return getattr(library, symbol)

        return Watched()


_REAL_CDLL = ctypes.CDLL


# Run in a fresh process: glibc's malloc counters (mallinfo2) around a 64 MiB block, and every
# symbol asked of a library loaded through ctypes while attnjax is imported.
_FRESH_PROCESS = textwrap.dedent(
    """
    import ctypes, os
    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks "
                    "keepcost".split()]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Info
    libc.malloc.restype = ctypes.c_void_p

    def big_block():
        \"\"\"(mmap'ed while alive, kept by malloc once freed) for a 64 MiB block.\"\"\"
        block = libc.malloc(64 << 20)
        mapped = libc.mallinfo2().hblkhd >= 64 << 20
        libc.free(ctypes.c_void_p(block))
        return mapped, libc.mallinfo2().fordblks >= 64 << 20

    asked, real = [], ctypes.CDLL
    class Watched:
        def __init__(self, name, *a, **k):
            self._lib = real(name, *a, **k)
        def __getattr__(self, symbol):
            asked.append(symbol)
            return getattr(self._lib, symbol)
    ctypes.CDLL = Watched
    environ = dict(os.environ)
    import attnjax, attnjax.training, attnjax.accounting, attnjax.perf
    print("imported:", "mallopt" in asked, dict(os.environ) == environ)
    print("default:", *big_block())
    print("tune:", sorted(attnjax.perf.cpu.tune()))
    print("tuned:", *big_block())
    """
)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_import_changes_nothing_and_tune_keeps_large_blocks_on_the_heap():
    """In a fresh process: ``import attnjax`` (and its subpackages) asks no library for
    ``mallopt`` and leaves the environment (XLA_FLAGS and all) as it was; a freed 64 MiB block
    is then still unmapped as by default (glibc's ``mallinfo2`` counts it in ``hblkhd`` while
    alive, not in ``fordblks`` once freed). After ``tune()`` it comes from the heap and stays
    there, ready for the next step."""
    result = subprocess.run([sys.executable, "-c", _FRESH_PROCESS], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "imported: False True",
        "default: True False",
        "tune: ['M_MMAP_MAX', 'M_TRIM_THRESHOLD']",
        "tuned: False True",
    ]


def test_building_and_running_steps_touches_no_malloc_setting_or_flag(monkeypatch):
    """The train and eval steps are built, compiled and run with ``ctypes.CDLL`` watched: no
    library is asked for ``mallopt``, the environment is unchanged, and neither builder calls
    ``tune``."""
    watched = _WatchedLibraries()
    monkeypatch.setattr(ctypes, "CDLL", watched)
    monkeypatch.setattr(cpu, "tune", lambda: pytest.fail("a step builder called tune()"))
    before = dict(os.environ)
    split, tx, batch = _tiny_model_optimizer_batch()
    state, metrics = make_train_step(split.graphdef, split.rest, tx)(
        init_train_state(split.params, tx), batch
    )
    make_eval_step(split.eval_graphdef, split.rest)(state.params, batch)
    assert np.isfinite(float(metrics["loss"]))
    assert not [s for s in watched.symbols if s[1] == "mallopt"], watched.symbols
    assert dict(os.environ) == before


def test_no_library_module_imports_the_tuning():
    """Only launchers opt in: no module of attnjax outside ``attnjax/perf`` imports it."""
    from tests.test_architecture import PACKAGE, imported_names

    for path in PACKAGE.rglob("*.py"):
        if path.parent.name != "perf":
            bad = {n for n in imported_names(path) if n.startswith("attnjax.perf")}
            assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_tune_sets_each_malloc_parameter_and_is_idempotent(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu, "_glibc_mallopt", lambda: lambda p, v: calls.append((p, v)) or 1)
    want = {"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": 2**31 - 1}
    assert cpu.tune() == want
    assert cpu.tune() == want  # again: the same values, set again
    assert calls == [(-4, 0), (-1, 2**31 - 1)] * 2  # malloc.h: M_MMAP_MAX -4, M_TRIM_THRESHOLD -1
    # a parameter glibc refuses (mallopt returns 0) is not reported as applied
    monkeypatch.setattr(cpu, "_glibc_mallopt", lambda: lambda p, v: int(p == -4))
    assert cpu.tune() == {"M_MMAP_MAX": 0}
    monkeypatch.setattr(cpu, "_glibc_mallopt", lambda: None)  # not glibc: nothing to do
    assert cpu.tune() == {}


def test_compiler_options_follow_the_platform():
    assert cpu.compiler_options("tpu") is None
    assert cpu.compiler_options("cuda") is None
    options = cpu.compiler_options("cpu")
    assert options is None or options == {"xla_cpu_experimental_ynn_fusion_type": ""}
    if options is not None:  # a fresh dict each time: a caller may change its copy
        options["x"] = 1
        assert "x" not in cpu.compiler_options("cpu")


def test_compiler_options_change_speed_not_results():
    """A train step compiled with ``compiler_options("cpu")`` gives XLA's default results (to
    summation order), and the options reach the compiled program."""
    split, tx, batch = _tiny_model_optimizer_batch()
    options = cpu.compiler_options("cpu")
    tuned = make_train_step(split.graphdef, split.rest, tx, compiler_options=options)
    plain = make_train_step(split.graphdef, split.rest, tx)
    fresh = lambda: init_train_state(jax.tree.map(jnp.copy, split.params), tx)
    (a, a_metrics), (b, b_metrics) = tuned(fresh(), batch), plain(fresh(), batch)
    for name in ("loss", "grad_norm"):
        np.testing.assert_allclose(a_metrics[name], b_metrics[name], rtol=1e-5)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    if options is not None:
        assert "__ynn_fusion" not in tuned.lower(fresh(), batch).compile().as_text()
        assert "__ynn_fusion" in plain.lower(fresh(), batch).compile().as_text()


def test_launcher_flag_turns_tuning_off(monkeypatch):
    """``common.run(main)``, as every launcher ends: tune() runs before main by default and
    not at all with ``--cpu_tune=false``."""
    from experiments import common

    events = []
    monkeypatch.setattr(cpu, "tune", lambda: events.append("tune") or {})
    main = lambda argv: events.append("main")
    with flagsaver.flagsaver():
        for argv in (["launcher"], ["launcher", "--cpu_tune=false"]):
            monkeypatch.setattr(sys, "argv", argv)
            with pytest.raises(SystemExit) as exit_:
                common.run(main)
            assert exit_.value.code in (None, 0)
    assert events == ["tune", "main", "main"]
    assert flags.FLAGS["cpu_tune"].default is True


def test_train_and_evaluate_asks_options_for_the_platform_of_its_mesh(tmp_path, monkeypatch):
    """``compiler_options`` is called once with the mesh's platform, and what it returns is
    what both steps are compiled with."""
    from attnjax.training import loop
    from configs import train as train_config

    config = train_config.get_config("tiny")
    config.train.update(steps=3, warmup=1, eval_batches=1)
    asked, built = [], []

    def spy(name):
        real = getattr(loop, name)

        def build(*args, **kwargs):
            built.append((name, kwargs["compiler_options"]))
            return real(*args, **kwargs)

        return build

    for name in ("make_train_step", "make_eval_step"):
        monkeypatch.setattr(loop, name, spy(name))
    options = cpu.compiler_options(jax.devices()[0].platform)
    result = loop.train_and_evaluate(
        config, tmp_path / "run", compiler_options=lambda p: asked.append(p) or options
    )
    assert result.steps == 3
    assert asked == [jax.devices()[0].platform]
    assert built == [("make_train_step", options), ("make_eval_step", options)]
