"""Saving and loading trained detectors: a folder with ``model.safetensors`` and ``config.json``.

Weights are stored with safetensors only (no pickle, so loading a checkpoint cannot run code). ``config.json`` is
the full :class:`DetectorConfig` (network sizes, class names, preprocessing), so a folder is self-describing.
Every problem with a checkpoint folder is reported as a one-line :class:`UserInputError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file
from torch import nn

from . import __version__
from .atomic_file import atomic_path, atomic_write_text
from .config import DetectorConfig
from .errors import UserInputError
from .organ_detr import build_model

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
DEFAULT_MODEL_NAME = "default"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "pretrained" / "openkbp-small"


@dataclass
class LoadedDetector:
    """A network ready for inference and what it was trained with."""

    model: nn.Module  # in eval mode, on the requested device
    config: DetectorConfig
    weights_sha256: str  # of model.safetensors: identifies the exact weights in results
    directory: Path


def save_checkpoint(directory: str | Path, model: nn.Module, config: DetectorConfig, overwrite: bool = False) -> Path:
    """Write ``model.safetensors`` and ``config.json`` to ``directory`` (created if needed); returns the folder.

    An existing checkpoint in ``directory`` is only replaced with ``overwrite=True``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights_path, config_path = directory / WEIGHTS_FILE, directory / CONFIG_FILE
    if not overwrite and (weights_path.exists() or config_path.exists()):
        raise UserInputError(f"a checkpoint already exists in {directory}; choose another folder")
    write_weights(weights_path, model, config.class_names)
    atomic_write_text(config_path, config.to_json())
    return directory


def rewrite_config(loaded: LoadedDetector, **changes: Any) -> Path:
    """Replace fields of a loaded model's config (e.g. a calibrated ``presence`` or ``refinement``) in its
    ``config.json``, atomically; the weights stay as they are. Returns the file."""
    path = loaded.directory / CONFIG_FILE
    atomic_write_text(path, dataclasses.replace(loaded.config, **changes).to_json())
    return path


def write_weights(path: Path, model: nn.Module, class_names: Sequence[str]) -> None:
    """``model``'s state as safetensors at ``path`` (atomically), with the producer and class names as metadata."""
    # Independent contiguous copies: safetensors refuses tensors that share memory (e.g. tied heads).
    state = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in model.state_dict().items()}
    metadata = {"format": "pt", "producer": f"organdetr {__version__}", "class_names": json.dumps(list(class_names))}
    with atomic_path(path) as temp:
        save_file(state, str(temp), metadata=metadata)


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of a safetensors file and the sha256 of the very bytes loaded (it identifies the weights in use)."""
    data = path.read_bytes()
    try:
        state = load(data)
    except (SafetensorError, OSError, ValueError) as error:
        raise UserInputError(f"cannot read weights {path}: {error}") from None
    return state, hashlib.sha256(data).hexdigest()


def _resolve(ref: str | Path | None) -> Path:
    if ref is None or str(ref) == DEFAULT_MODEL_NAME:
        if not (DEFAULT_MODEL_DIR / WEIGHTS_FILE).is_file():
            raise UserInputError(f"no shipped model found at {DEFAULT_MODEL_DIR}; pass the folder of a trained model")
        return DEFAULT_MODEL_DIR
    directory = Path(ref).expanduser()
    if directory.is_file():
        raise UserInputError(
            f"{directory} is a file; pass the model folder that holds {WEIGHTS_FILE} and {CONFIG_FILE}"
        )
    if not directory.is_dir():
        raise UserInputError(f"model folder not found: {directory}")
    return directory


def check_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """One-line description of every key or shape difference between ``state`` and ``model``."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{name} {list(state[name].shape)} != {list(shape)}"
        for name, shape in expected.items()
        if name in state and tuple(state[name].shape) != shape
    ]
    problems = [
        f"{len(items)} {kind} (first: {items[0]})"
        for kind, items in (
            ("missing tensors", missing),
            ("unexpected tensors", unexpected),
            ("wrong shapes", mismatched),
        )
        if items
    ]
    if problems:
        raise UserInputError(f"weights in {path} do not fit its config.json: {'; '.join(problems)}")


def load_checkpoint(ref: str | Path | None = None, device: str | torch.device = "cpu") -> LoadedDetector:
    """Load the model folder ``ref`` (``None`` or ``"default"``: the shipped model) onto ``device``, in eval mode."""
    directory = _resolve(ref)
    weights_path, config_path = directory / WEIGHTS_FILE, directory / CONFIG_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise UserInputError(f"{path.name} missing in model folder {directory}")
    try:
        config = DetectorConfig.from_json_file(config_path)
    except (ValueError, TypeError) as error:  # json.JSONDecodeError is a ValueError
        raise UserInputError(f"invalid {config_path}: {error}") from None
    state, weights_sha256 = read_weights(weights_path)
    try:
        model = build_model(config.model)
    except (ValueError, TypeError) as error:
        raise UserInputError(f"cannot build the network described in {config_path}: {error}") from None
    check_state(model, state, weights_path)
    model.load_state_dict(state)
    return LoadedDetector(
        model=model.to(device).eval(),
        config=config,
        weights_sha256=weights_sha256,
        directory=directory,
    )
