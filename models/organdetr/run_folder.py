"""A training run's folder (``organdetr train --output``) and its checkpoints.

``last/`` is the newest checkpoint (model.safetensors + config.json, see :mod:`organdetr.checkpoint`) with the
training state that ``--resume`` continues from; ``best/`` is the checkpoint with the best validation mAP so far.
Each holds the validation ``metrics.json`` it was saved with. The epoch logs live beside them
(:mod:`organdetr.training_log`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import save_checkpoint
from .config import DetectorConfig
from .errors import UserInputError

TRAINING_STATE_FILE = "training_state.pt"
METRICS_FILE = "metrics.json"


class RunFolder:
    """The ``last/`` and ``best/`` checkpoints of one run."""

    def __init__(self, path: Path):
        self.path = path
        self.last = path / "last"

    def check_start(self, resume: bool) -> None:
        """A new run needs an empty (or no) folder; a resumed one needs ``last/``'s training state."""
        if resume:
            if not (self.last / TRAINING_STATE_FILE).is_file():
                raise UserInputError(f"nothing to resume: {self.last / TRAINING_STATE_FILE} does not exist")
        elif self.path.exists() and any(self.path.iterdir()):
            raise UserInputError(f"{self.path} is not empty; pass --resume to continue it or choose a new folder")

    def save(
        self,
        name: str,
        model: nn.Module,
        config: DetectorConfig,
        metrics: dict[str, Any] | None,
        training_state: dict[str, Any] | None = None,
    ) -> None:
        """Write a complete checkpoint folder next to the old one, then swap it in (never a half-written last/)."""
        final = self.path / name
        partial = self.path / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        save_checkpoint(partial, model, config)
        if training_state is not None:
            torch.save(training_state, partial / TRAINING_STATE_FILE)
        if metrics is not None:
            (partial / METRICS_FILE).write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        old = self.path / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        partial.rename(final)
        shutil.rmtree(old, ignore_errors=True)

    def training_state(self) -> dict[str, Any]:
        """What :meth:`save` stored with ``last/`` (tensors and plain data only: no pickled code)."""
        return torch.load(self.last / TRAINING_STATE_FILE, map_location="cpu", weights_only=True)
