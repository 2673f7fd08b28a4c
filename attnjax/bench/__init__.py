"""Speed and memory of attention and of a training step, against peers measured in the same run.

From Python (a notebook, Colab)::

    from attnjax import bench
    result = bench.run(bench.Options(suite="attention", cases=("b4_t1024",), modes=("fwd_bwd",),
                                     causal="true"))
    bench.write_json("/tmp/bench.json", result)

From the shell, ``python -m experiments.benchmark`` takes the fields of :class:`Options` as
flags. Importing this package has no side effect beyond importing JAX; torch is imported only
when a torch row runs.

Attention suite (:mod:`attnjax.bench.attention`): for each case, mode (``fwd``, ``fwd_bwd``)
and masking (``causal``), times attnjax's implementations (by default every backend of
``attnjax.functional.backends.REGISTRY`` that runs on this platform, so not ``cudnn`` off
NVIDIA GPUs or ``pallas_tpu`` off TPUs, then ``auto``: ``implementation=None``) and the
peers: ``jax.nn.dot_product_attention``, ``flax.nnx.dot_product_attention`` (the attention
function of Flax's ``MultiHeadAttention``, given the causal mask from ``nnx.make_causal_mask``
as that module is; Flax 0.12's function accepts K < N heads itself, so GQA inputs are passed
unrepeated) and, when torch imports and JAX runs on the CPU,
``torch.nn.functional.scaled_dot_product_attention`` (inputs [B, N, T, H], ``is_causal``,
``enable_gqa``; forward under ``torch.no_grad()``; torch's default threads). JAX functions are
jitted; ``fwd_bwd`` is ``jax.value_and_grad`` of ``f(q, k, v).sum()`` with respect to q, k and
v (torch: ``.sum().backward()``). Rows whose lowered programs are identical (``auto`` picking
``blocked``, ``jax.nn`` and ``attnjax[xla]`` without a mask) are timed once and say so.

Timing (:mod:`attnjax.bench.timing`): every JAX row is compiled ahead of time (its compile
time is reported apart, ``compile_seconds``); each row gets one warm-up call, then the rows of
a group are timed in turn, round-robin, up to ``repeats`` calls each, fewer when calls are
long (at most ``budget_s`` of timed calls per row); a warm-up call longer than ``budget_s`` is
the only sample (column ``n`` shows ``w``). Rows report the median (``seconds``) and the
interquartile range (``iqr_seconds``) of their calls.

FLOPs (one convention, shared with ``attnjax.accounting``): only the two matmuls of the grid,
a multiply-add being 2 FLOPs: forward ``4·B·N·T·S·H``; causal counts the keys each query sees,
``T(T+1)/2`` of the ``T·S`` pairs; forward+backward is 3x forward (the backward pass's four
matmuls; FlashAttention's papers count 3.5x, adding the recomputed scores). ``%mm`` is that
rate as a percentage of a jitted float32 2048³ matmul in JAX measured at the start of the run.

Memory (:mod:`attnjax.bench.memory`): JAX rows report the compiled executable's
``memory_analysis()`` (arguments + outputs + temporaries − aliased; XLA's buffer assignment,
exact for what XLA allocates, not a measurement of the process). A row whose compiled peak
exceeds ``max_memory_gib`` (default 80% of the memory available when it is compiled) is skipped
with its size. Torch rows report the peak of live tensor bytes during one call (its inputs
plus allocations recorded by ``torch.profiler``). ``long_b1_t32768`` runs only what never holds
the [B, N, T, S] grid (32 GiB in float32): ``attnjax[blocked]``, ``attnjax[auto]`` (skipped by
the memory check if it picks a grid-building implementation) and torch's CPU flash kernel.

Train suite (:mod:`attnjax.bench.train`): one full training step (forward, backward, clipped
AdamW update) of ``attnjax.models.DecoderLM`` built as ``experiments.train`` builds it at
nanoGPT's CPU recipe (4 layers, 4 heads, width 128, T=64, batch 12) and at 6 layers, 6 heads,
width 384, T=256, batch 16; vocabulary 65, no dropout, bias-free, tied embeddings, learned
positions, exact GELU. With torch, the same step of nanoGPT's model
(:mod:`attnjax.bench.torch_nanogpt`) is timed in the same run, blocks of steps of the two
taken in turn. Tokens/s = B·T / median step time (median over ``train_repeats`` blocks of the
setting's step count, after one warm-up step).

Absolute times on a shared machine are noisy: compare the ratio columns (``vs X`` = this row's
time / X's time, in the same run; below 1 is faster). To compare two commits, run
``scripts/before_after.py`` (:mod:`attnjax.bench.compare`): the launcher of each checkout in
turn, ratios per row.

The default run took 14-15 min (two runs) on a 2-core machine shared with other jobs (load 4-6;
the process got about 11 CPU-minutes; a 2048³ matmul ran at 66-71 of the usual ~190 GFLOP/s);
over half of it is ``long_b1_t32768`` and ``b1_t4096``'s forward+backward.

Replicas suite (:mod:`attnjax.bench.replicas`): S seeds of one model as one vmapped step
against S separate runs' steps, interleaved; ``sequential/vmapped`` above 1 means vmapping pays.
"""

from attnjax.bench.attention import AUTO, CASES, DEFAULT_CASES, MODES, PEERS, Case
from attnjax.bench.compare import compare_runs, format_comparison
from attnjax.bench.interventions import ABLATION_SETTINGS
from attnjax.bench.replicas import REPLICA_SETTINGS
from attnjax.bench.report import write_json
from attnjax.bench.suites import SUITES, Options, machine_info, run
from attnjax.bench.timing import interleaved_samples, summarize
from attnjax.bench.train import DEFAULT_TRAIN_SETTINGS, TRAIN_SETTINGS, TrainSetting

__all__ = [
    "ABLATION_SETTINGS",
    "AUTO",
    "CASES",
    "DEFAULT_CASES",
    "DEFAULT_TRAIN_SETTINGS",
    "MODES",
    "PEERS",
    "REPLICA_SETTINGS",
    "SUITES",
    "TRAIN_SETTINGS",
    "Case",
    "Options",
    "TrainSetting",
    "compare_runs",
    "format_comparison",
    "interleaved_samples",
    "machine_info",
    "run",
    "summarize",
    "write_json",
]
