"""Every code block of the README runs as written.

Python blocks run, each in a fresh namespace (a reader copies one block at a time), and a line
``expr  # (a, b, ...)`` must evaluate to what its comment says (a shape for arrays). Shell
blocks: every ``python -m experiments.<name> ...`` command must parse (its module exists, its
flags and ``--config.*`` overrides are accepted); the jobs themselves are run by the
experiment tests, and ``uv run pytest`` / ``.ci/run`` by CI.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)
PYTHON_BLOCKS = [code for language, code in BLOCKS if language == "python"]
SHELL_BLOCKS = [code for language, code in BLOCKS if language == "bash"]
_CLAIM = re.compile(r"^(?P<expr>[A-Za-z_][^=#]*?)\s+#\s+(?P<claim>\(.*?\))(\s|$)")


def _first_line(code: str) -> str:
    return next(line for line in code.splitlines() if line.strip() and not line.startswith("#"))


def _experiment_commands() -> list[list[str]]:
    commands = []
    for block in SHELL_BLOCKS:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if "-m" in words and words[words.index("-m") + 1].startswith("experiments."):
                commands.append(words[words.index("-m") + 1 :])
    return commands


def test_readme_has_the_blocks_this_file_checks():
    assert len(PYTHON_BLOCKS) >= 5 and len(_experiment_commands()) >= 10
    claims = [line for code in PYTHON_BLOCKS for line in code.splitlines() if _CLAIM.match(line)]
    assert len(claims) >= 4, claims  # the shapes and tokens the pretrained block promises
    assert README.startswith("# attnjax\n\n```bash\nuv run python -m experiments.sweep\n")


def _needs_group(code: str):
    """Blocks that compile for TPU need the ``tpu`` group: they run with the ``aot`` tests."""
    return [pytest.mark.aot] if "attnjax.aot" in code or "from attnjax import aot" in code else []


@pytest.mark.parametrize(
    "code", [pytest.param(c, marks=_needs_group(c), id=_first_line(c)) for c in PYTHON_BLOCKS]
)
def test_python_block_runs_as_written(code, tmp_path, monkeypatch):
    if _needs_group(code):
        pytest.importorskip("libtpu", reason="needs libtpu: `uv sync --locked --group tpu`")
    monkeypatch.chdir(tmp_path)  # blocks may write figures
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    for line in code.splitlines():
        match = _CLAIM.match(line)
        if match and "(" not in match["expr"].split(".")[0]:
            value = eval(match["expr"], namespace)  # noqa: S307
            claimed = ast.literal_eval(match["claim"])
            assert tuple(getattr(value, "shape", value)) == claimed, line


_PARSE_FLAGS = """
import importlib, json, sys
from absl import flags
sys.argv = json.loads(sys.argv[1])  # config_flags reads the overrides from sys.argv at import
importlib.import_module(sys.argv[0])
flags.FLAGS(sys.argv)
print("parsed")
"""


@pytest.mark.parametrize("command", _experiment_commands(), ids=" ".join)
def test_shell_command_parses(command):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", _PARSE_FLAGS, json.dumps(command)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parsed" in result.stdout
