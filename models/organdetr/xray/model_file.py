"""Saving and loading trained MV2D models: a folder with ``model.safetensors`` and ``xray_config.json`` (the full
:class:`~organdetr.xray.training_config.XrayTrainingConfig`).

The config has its own file name, not the CT detector's ``config.json``: the CT model catalog
(:mod:`organdetr_backend.model_catalog`) reads every ``pretrained/`` folder with a ``config.json`` as a CT detector,
and would stumble over an X-ray model shipped beside them.

Weights are safetensors only (loading runs no code); every problem with a folder is a one-line
:class:`~organdetr.errors.UserInputError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic_file import atomic_write_text
from ..checkpoint import WEIGHTS_FILE, check_state, read_weights, write_weights
from ..errors import UserInputError
from .mv2d import MV2D
from .training_config import XrayTrainingConfig

CONFIG_FILE = "xray_config.json"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "pretrained" / "xray-mv2d-small"


@dataclass(eq=False)
class LoadedXrayModel:
    model: MV2D  # in eval mode, on the requested device
    config: XrayTrainingConfig
    weights_sha256: str
    directory: Path


def save_model(directory: str | Path, model: MV2D, config: XrayTrainingConfig) -> Path:
    """Write (or replace) the weights and config in ``directory``, each file atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_weights(directory / WEIGHTS_FILE, model, config.class_names)
    atomic_write_text(directory / CONFIG_FILE, config.to_json())
    return directory


def load_model(directory: str | Path | None = None, device: str | torch.device = "cpu") -> LoadedXrayModel:
    """Load a model folder (``None``: the shipped X-ray model) onto ``device``, in eval mode."""
    directory = DEFAULT_MODEL_DIR if directory is None else Path(directory).expanduser()
    if not directory.is_dir():
        raise UserInputError(f"X-ray model folder not found: {directory}")
    weights_path, config_path = directory / WEIGHTS_FILE, directory / CONFIG_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise UserInputError(f"{path.name} missing in X-ray model folder {directory}")
    config = XrayTrainingConfig.from_json_file(config_path)
    state, weights_sha256 = read_weights(weights_path)
    model = MV2D(config.model)
    check_state(model, state, weights_path)
    model.load_state_dict(state)
    return LoadedXrayModel(model.to(device).eval(), config, weights_sha256, directory)
