"""Starting a new run from a trained model (``organdetr train --init-weights``).

The run may add to the network it starts from: new heads (initialised anew), new input channels and a wider fine
stage of the segmentation branch. Growth preserves the function: a layer's new inputs get zero weights (new channels
are appended after the old ones in every concatenation), its new outputs keep their fresh initialisation, so the
network starts out computing what it did and the new channels learn from there. Only layers without normalisation
across channels can grow that way (the fine stage has none; a LayerNorm's statistics would change). Every other
weight must fit exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .errors import UserInputError
from .organ_detr import build_model

# Layers that a fine-tuning run may add to the network it starts from.
ADDED_LAYERS = ("seg_branch.", "decoder.quality_head.", "presence_head.")
# Layers that may grow wider (``--fine-channels``); any convolution may gain input channels (``--soft-tissue-channel``).
GROWING_LAYERS = ("seg_branch.fine_units.", "seg_branch.fine_classifier.")


def _grown(name: str, value: torch.Tensor, fresh: torch.Tensor | None) -> torch.Tensor:
    """``value`` inside the larger freshly initialised ``fresh`` of the same rank: a weight ``[out, in, ...]`` keeps
    ``fresh``'s rows for new outputs and gets zeros for new inputs of its old outputs; a vector (bias, norm) keeps
    ``fresh``'s entries for new channels. Tensors that do not grow that way come back as they are."""
    if fresh is None or fresh.dim() != value.dim() or fresh.shape == value.shape:
        return value
    gains_inputs_only = value.dim() == 5 and value.shape[0] == fresh.shape[0]
    if not (gains_inputs_only or name.startswith(GROWING_LAYERS)):
        return value
    shrinks = any(old > new for old, new in zip(value.shape, fresh.shape, strict=True))
    if shrinks or value.shape[2:] != fresh.shape[2:]:
        return value
    grown = fresh.detach().clone()
    old = tuple(slice(0, n) for n in value.shape)
    grown[old] = value
    if value.dim() >= 2:
        grown[: value.shape[0], value.shape[1] :] = 0.0
    return grown


def extended_model(initial_model: nn.Module, model_config: ModelConfig) -> nn.Module:
    """The fine-tuning network: ``initial_model`` itself, or a network of ``model_config`` holding its weights."""
    if initial_model.config == model_config:
        return initial_model
    model = build_model(model_config)
    target = model.state_dict()
    state = {name: _grown(name, value, target.get(name)) for name, value in initial_model.state_dict().items()}
    unmatched = [name for name, value in state.items() if name not in target or target[name].shape != value.shape]
    missing = [name for name in target if name not in state]
    if unmatched or not all(name.startswith(ADDED_LAYERS) for name in missing):
        raise UserInputError("--init-weights: the given model's network does not match this run's")
    model.load_state_dict(state, strict=False)
    return model
