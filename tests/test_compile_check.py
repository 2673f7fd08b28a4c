"""attnjax.aot.plan (compile_check) and its launcher, on CPU: the row logic on fake compiled
programs and out-of-memory errors, one real compile for ``cpu:1`` checked against counts made
independently (the deviceless TPU/GPU compiles are in tests/test_aot.py, marker ``aot``)."""

from __future__ import annotations

import importlib.metadata
import math
import types

import numpy as np
import pytest

from attnjax.aot import plan

HLO = """
ENTRY %main {
  %p0 = f32[8,16]{1,0} parameter(0)
  %all-reduce.1 = f32[8,16]{1,0} all-reduce(f32[8,16]{1,0} %p0), replica_groups={{0,1}}
  %ag = f32[16,16]{1,0} all-gather-start(f32[8,16]{1,0} %p0), dimensions={0}
  %agd = f32[16,16]{1,0} all-gather-done(f32[16,16]{1,0} %ag)
  %t = (f32[4,16]{1,0}, f32[4,16]{1,0}) reduce-scatter(f32[8,16]{1,0} %p0, f32[8,16] %p0)
  %all-reduce.2 = f32[8,16]{1,0} all-reduce(f32[8,16]{1,0} %all-reduce.1)
  ROOT %cp = f32[8,16]{1,0} collective-permute(f32[8,16]{1,0} %p0), source_target_pairs={{0,1}}
}
"""


def test_collectives_counts_each_kind_once_per_op():
    assert plan.collectives(HLO) == {
        "all-reduce": 2, "all-gather": 1, "reduce-scatter": 1, "collective-permute": 1,
    }  # fmt: skip
    assert plan.collectives("%x = f32[2] add(%a, %b)") == {}


@pytest.mark.parametrize(
    "name, chip, platform, count",
    [
        ("v5e:2x2", "v5e", "tpu", 4),
        ("v5e:4x4", "v5e", "tpu", 16),
        ("v5p:2x2x1", "v5p", "tpu", 4),
        ("h200:1x1x8", "h200", "cuda", 8),
        ("H100:1x1x2", "h100", "cuda", 2),
        ("cpu:1", "cpu", "cpu", 1),
    ],
)
def test_parse_topology(name, chip, platform, count):
    got = plan.parse_topology(name)
    assert (got.chip, got.platform, got.num_devices) == (chip, platform, count)


@pytest.mark.parametrize(
    "name, message",
    [
        ("v5e", "is not like"),
        ("v9x:2x2", "unknown chip 'v9x'"),
        ("h200:8", "1x1x8"),
        ("h200:2x1x4", "1x1x8"),
        ("v5e:4", "2x2"),
    ],
)
def test_bad_topology_is_refused_by_name(name, message):
    with pytest.raises(ValueError, match=r"topology=.*" + message):
        plan.parse_topology(name)


def _fake(arguments, outputs, temporaries, aliased, flops, bytes_accessed, text=HLO):
    memory = types.SimpleNamespace(
        argument_size_in_bytes=arguments, output_size_in_bytes=outputs,
        temp_size_in_bytes=temporaries, alias_size_in_bytes=aliased,
        generated_code_size_in_bytes=0,
    )  # fmt: skip
    return types.SimpleNamespace(
        memory_analysis=lambda: memory,
        cost_analysis=lambda: {"flops": flops, "bytes accessed": bytes_accessed},
        as_text=lambda: text,
    )


def test_row_from_compiled_totals_fit_and_roofline():
    rng = np.random.default_rng()
    gib = 2**30
    arguments, temporaries = int(rng.integers(2, 6)) * gib, int(rng.integers(1, 4)) * gib
    chip = plan.CHIPS["v5e"]  # 16 GiB, 819 GB/s, 197 TFLOP/s
    flops, xla_bytes, analytic = 3e14, 2e11, 5e14  # the analytic count is the larger
    row = plan.row_from_compiled(
        _fake(arguments, arguments, temporaries, arguments, flops, xla_bytes),
        chip=chip, analytic_flops=analytic, tokens=4096,
    )  # fmt: skip
    total = arguments + temporaries  # the donated state's output reuses its argument
    assert row["bytes"]["total"] == total
    assert row["fits"] is True and row["headroom"] == 16 * gib - total
    assert row["collectives"]["all-reduce"] == 2
    step_s = max(analytic / 197e12, xla_bytes / 819e9)
    assert math.isclose(row["roofline"]["step_s"], step_s)
    assert math.isclose(row["roofline"]["tokens_per_s"], 4096 / step_s)
    assert row["roofline"]["bound"] == "compute"
    # memory bound: bytes dominate; too big: does not fit
    row = plan.row_from_compiled(
        _fake(10 * gib, 10 * gib, 8 * gib, 0, 1e9, 5e12), chip=chip, analytic_flops=0, tokens=1
    )
    assert row["fits"] is False and row["headroom"] == -12 * gib
    assert row["roofline"]["bound"] == "memory"
    assert math.isclose(row["roofline"]["step_s"], 5e12 / 819e9)
    # no chip (CPU): nothing to compare with
    row = plan.row_from_compiled(_fake(1, 1, 1, 0, 1, 1), chip=None, analytic_flops=1, tokens=1)
    assert row["fits"] is None and row["roofline"]["step_s"] is None


OOM = """RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space \
hbm. Used 27.50G of 15.75G hbm. Exceeded hbm capacity by 11.75G.

Total hbm usage >= 27.76G:
    reserved        258.00M
    program          20.85G"""


def test_out_of_memory_compile_is_a_row_with_the_compilers_figures():
    row = plan.row_from_error(RuntimeError(OOM), chip=plan.CHIPS["v5e"])
    assert row["fits"] is False
    assert row["bytes"]["total"] == round(27.50 * 2**30)
    assert row["device_memory"] == round(15.75 * 2**30)
    assert row["headroom"] == round(15.75 * 2**30) - round(27.50 * 2**30)
    assert "Ran out of memory" in row["compiler_message"]
    assert plan.row_from_error(ValueError("mesh.model=3 ..."), chip=None) is None
    # the other form libtpu uses: only the temporaries' need is given
    other = RuntimeError(
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (111.77G) exceeds available HBM (15.75G)."
    )
    row = plan.row_from_error(other, chip=plan.CHIPS["v5e"])
    assert row["fits"] is False and row["bytes"]["total"] is None
    assert row["bytes"]["temporaries"] == round(111.77 * 2**30)
    assert row["device_memory"] == round(15.75 * 2**30)


def test_format_rows_shows_fit_and_missing_figures():
    row = dict(
        config="gpt3-6.7b", topology="v5e:1x1", mesh="data=1,fsdp=1,model=1", batch_size=1,
        seq_len=2048, attention="pallas_tpu", compile_s=12.3, roofline=None,
        **plan.row_from_error(RuntimeError(OOM), chip=plan.CHIPS["v5e"]),
    )  # fmt: skip
    text = plan.format_rows([row])
    assert text.splitlines()[0].split()[:3] == ["config", "topology", "mesh"]
    line = text.splitlines()[1]
    assert "gpt3-6.7b" in line and " NO " in line and "29.53" in line and "12.3" in line


def test_compile_check_on_cpu_matches_independent_counts():
    from attnjax import accounting
    from attnjax.models import ModelConfig
    from configs import train

    config = train.get_config("tiny")  # D=16, L=1, N=2, recall: T=15, B=8
    rows = plan.compile_check(config, "cpu:1", batch_size=4)
    assert len(rows) == 1
    row = rows[0]
    model = ModelConfig.from_config(config.model)
    params = accounting.count_params(model).total
    assert row["params"] == params
    assert (row["batch_size"], row["seq_len"], row["devices"]) == (4, 15, 1)
    assert row["mesh"] == "data=1,fsdp=1,model=1" and row["attention"] == "blocked"
    # arguments: params, Adam's two moments (float32), int32 step and counts, and the batch
    # (inputs, targets int32, mask float32); the state comes back in place (donated)
    batch_bytes = 3 * 4 * 15 * 4
    state_bytes = 3 * 4 * params
    assert 0 <= row["bytes"]["arguments"] - state_bytes - batch_bytes <= 64
    assert row["bytes"]["aliased"] >= state_bytes
    analytic = accounting.training_flops_per_sequence(model, 15) * 4
    assert row["analytic_flops"] == analytic
    # XLA computes the whole (masked) grid and the elementwise work besides
    assert analytic < row["xla_flops"] < 2 * analytic
    assert row["collectives"] == {} and row["fits"] is None
    assert row["compile_s"] > 0


def test_compile_check_refuses_a_mesh_the_topology_lacks_before_compiling():
    from configs import gpt3

    config = gpt3.get_config("125m")
    config.unlock()
    config.mesh.fsdp = 2
    with pytest.raises(ValueError, match=r"mesh\.fsdp=2 .*only 1 exist"):
        plan.compile_check(config, "cpu:1")


def test_launcher_names_the_group_to_install(monkeypatch):
    from absl import flags

    from experiments import compile_check

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    flags.FLAGS(["compile_check", "--topology=v5p:2x2x1"])
    with pytest.raises(ValueError, match=r"libtpu.*uv sync --locked --group tpu"):
        compile_check.main(["compile_check"])
    command = compile_check.isolated_command(["x", "--topology=v5e:2x2"])
    assert command[:3] == ["unshare", "-n", "--"] and "TPU_SKIP_MDS_QUERY=1" in command
    assert command[-3:] == ["-m", "experiments.compile_check", "--topology=v5e:2x2"]
