"""Every config file in configs/ loads through absl's config flag and builds its model
abstractly (nnx.eval_shape: shapes only, nothing allocated); sweeps build every grid point."""

import dataclasses
import importlib
import inspect
import pathlib
import sys

import numpy as np
import pytest
from absl import flags
from flax import nnx
from ml_collections import config_flags

from attnjax import models
from attnjax.models import DecoderLM, ModelConfig

pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"
SHARED = ("__init__.py", "common.py")  # pieces the config files import, not config files
CONFIG_FILES = sorted(p for p in CONFIG_DIR.glob("*.py") if p.name not in SHARED)


def _load(path: pathlib.Path, variant: str | None = None, *overrides: str):
    """Parse ``--config=path[:variant] --config.a.b=v ...`` the way the launchers do."""
    argument = str(path) if variant is None else f"{path}:{variant}"
    argv = ["prog", f"--config={argument}", *(f"--config.{o}" for o in overrides)]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", str(path), flag_values=values, lock_config=True, sys_argv=argv
    )
    values(argv)
    return values.config


def _build_abstract(model_config: ModelConfig):
    if model_config.architecture == "decoder":
        return nnx.eval_shape(lambda: DecoderLM(model_config, rngs=nnx.Rngs(0)))
    encoder = next(
        (getattr(models, n) for n in dir(models) if "Encoder" in n and n != "Embeddings"), None
    )
    if encoder is None:  # no encoder model class yet: its parts must still build
        return nnx.eval_shape(
            lambda: (
                [models.TransformerBlock(model_config, rngs=nnx.Rngs(0))] * model_config.num_layers
            )
        )
    return nnx.eval_shape(lambda: encoder(model_config, rngs=nnx.Rngs(0)))


def _variants(path: pathlib.Path) -> list[str | None]:
    module = importlib.import_module(f"configs.{path.stem}")
    return [None, *getattr(module, "VARIANTS", ())]


def test_there_are_config_files():
    assert {"train.py", "sweep.py"} <= {p.name for p in CONFIG_FILES}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_config_file_documents_its_command_and_has_a_default(path):
    module = importlib.import_module(f"configs.{path.stem}")
    assert "python -m experiments." in (module.__doc__ or ""), f"{path.name}: no command"
    parameters = inspect.signature(module.get_config).parameters.values()
    assert all(p.default is not inspect.Parameter.empty for p in parameters)


@pytest.mark.parametrize(
    "path, variant",
    [(p, v) for p in CONFIG_FILES for v in _variants(p)],
    ids=lambda x: getattr(x, "name", str(x)),
)
def test_config_loads_locked_and_builds_its_model(path, variant):
    config = _load(path, variant)
    assert config.is_locked
    model = _build_abstract(ModelConfig.from_config(config.model))
    leaves = nnx.state(model, nnx.Param) if not isinstance(model, list) else None
    if leaves is not None:
        total = sum(x.size for x in __import__("jax").tree.leaves(leaves))
        assert total > 0
    if "sweep" in config:
        from attnjax.training import sweep as sweep_lib

        for point in sweep_lib.sweep_points(config):
            point_model = ModelConfig.from_config(sweep_lib.point_run_config(config, point).model)
            assert (point_model.num_heads, point_model.num_layers) == (point.heads, point.layers)
            _build_abstract(point_model)


def test_overrides_follow_into_the_model_and_typos_are_refused():
    config = _load(CONFIG_DIR / "train.py", "induction")
    config.task.vocab_size = 40
    assert config.model.vocab_size == 40  # the model's vocabulary follows the task's
    config.model.head_dim = 8  # a placeholder: None by default, an int when given
    assert ModelConfig.from_config(config.model).resolved_head_dim == 8
    with pytest.raises(AttributeError, match="Did you mean"):
        config.model.num_hedas = 2


@pytest.mark.parametrize("variant", ["recall", "induction", "char"])
@pytest.mark.parametrize("field", ["max_seq_len", "vocab_size"])
def test_a_model_override_leaves_the_task_alone(variant, field):
    default = _load(CONFIG_DIR / "train.py", variant)
    config = _load(CONFIG_DIR / "train.py", variant, f"model.{field}=300")
    assert config.model[field] == 300
    assert config.task.to_dict() == default.task.to_dict()
    config.task.seq_len = 40  # the task's length no longer moves the overridden model field
    assert config.model[field] == 300


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.max_seq_len=8", r"model\.max_seq_len=8 .*task\.seq_len=15"),
        ("model.vocab_size=8", r"model\.vocab_size=8 .*task\.vocab_size=32"),
    ],
)
def test_a_model_too_small_for_the_task_names_both_settings(override, message):
    from attnjax.training.loop import check_run_config

    config = _load(CONFIG_DIR / "train.py", "recall", override)
    assert (config.task.seq_len, config.task.vocab_size) == (15, 32)
    with pytest.raises(ValueError, match=message):
        check_run_config(config)


def test_gpt3_num_heads_override_keeps_width_except_13b_which_keeps_head_dim():
    """configs/gpt3.py: head_dim is derived (D // N) except for 13b, whose head_dim = 128 is the
    paper's (N * H = 5120 != D = 5140) and stays fixed under a num_heads override."""
    heads = int(np.random.default_rng().choice([16, 24, 48, 64]))
    config = _load(CONFIG_DIR / "gpt3.py", "175b")
    config.model.num_heads = heads
    model = ModelConfig.from_config(config.model)
    assert model.num_heads * model.resolved_head_dim == model.model_dim == 12288
    config = _load(CONFIG_DIR / "gpt3.py", "125m")
    config.model.num_heads = 5
    with pytest.raises(ValueError, match="num_heads=5 must divide model_dim=768"):
        ModelConfig.from_config(config.model)
    config = _load(CONFIG_DIR / "gpt3.py", "13b")
    assert ModelConfig.from_config(config.model).resolved_head_dim == 128
    config.model.num_heads = heads
    model = ModelConfig.from_config(config.model)
    assert (model.resolved_head_dim, model.model_dim) == (128, 5140)
    config.model.head_dim = 5140 // 20
    config.model.num_heads = 20
    model = ModelConfig.from_config(config.model)
    assert model.num_heads * model.resolved_head_dim == 5140


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_every_model_config_field_is_settable_from_the_command_line(path):
    config = _load(path)
    assert set(config.model.keys()) == {f.name for f in dataclasses.fields(ModelConfig)}


def test_model_overrides_of_the_readme_reach_the_model(monkeypatch):
    overrides = [
        "--config.model.num_kv_heads=1", "--config.model.dtype=bfloat16",
        "--config.model.activation=relu", "--config.model.attention_implementation=einsum",
    ]  # fmt: skip
    values = flags.FlagValues()
    path = CONFIG_DIR / "train.py"
    # config_flags registers the overrides it finds in sys.argv when the flag is defined.
    monkeypatch.setattr(sys, "argv", ["prog", f"--config={path}:induction", *overrides])
    config_flags.DEFINE_config_file("config", str(path), flag_values=values, lock_config=True)
    values(sys.argv)
    model = ModelConfig.from_config(values.config.model)
    assert (model.num_kv_heads, model.dtype, model.activation) == (1, "bfloat16", "relu")
    assert model.attention_implementation == "einsum"
