"""Starting a new run from a trained model (``organdetr train --init-weights``).

The run may add to the network it starts from: new heads (initialised anew) and new input channels (their
first-convolution weights start at zero, so the network starts out computing what it did). Every other weight must
fit exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .errors import UserInputError
from .organ_detr import build_model

# Layers that a fine-tuning run may add to the network it starts from.
ADDED_LAYERS = ("seg_branch.", "decoder.quality_head.", "presence_head.")


def _widened(value: torch.Tensor, wanted: torch.Tensor | None) -> torch.Tensor:
    """A conv weight with fewer input channels than ``wanted`` gets zero weights for the new ones."""
    grows = (
        wanted is not None
        and value.dim() == wanted.dim() == 5
        and value.shape[0] == wanted.shape[0]
        and value.shape[2:] == wanted.shape[2:]
        and value.shape[1] < wanted.shape[1]
    )
    if not grows:
        return value
    return torch.cat([value, value.new_zeros(value.shape[0], wanted.shape[1] - value.shape[1], *value.shape[2:])], 1)


def extended_model(initial_model: nn.Module, model_config: ModelConfig) -> nn.Module:
    """The fine-tuning network: ``initial_model`` itself, or a network of ``model_config`` holding its weights."""
    if initial_model.config == model_config:
        return initial_model
    model = build_model(model_config)
    target = model.state_dict()
    state = {name: _widened(value, target.get(name)) for name, value in initial_model.state_dict().items()}
    unmatched = [name for name, value in state.items() if name not in target or target[name].shape != value.shape]
    missing = [name for name in target if name not in state]
    if unmatched or not all(name.startswith(ADDED_LAYERS) for name in missing):
        raise UserInputError("--init-weights: the given model's network does not match this run's")
    model.load_state_dict(state, strict=False)
    return model
