"""The single inference path of the detector, shared by the backend predictor and the evaluation.

``PreprocessedVolume -> network (inference mode; autocast on CUDA) -> one decoded box per organ class`` and, on
request, the segmentation of the finest segmentation head on the network grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserInputError
from .postprocess import DecodedOrgan, decode_detections
from .preprocess import PreprocessedVolume

DEVICE_CHOICES = ("auto", "cpu", "cuda")


@dataclass
class InferenceOutput:
    """Detections of one volume, in network-normalised coordinates."""

    organs: list[DecodedOrgan]
    segmentation: torch.Tensor | None  # LongTensor [D0, D1, D2] of label values on the network grid, CPU


def select_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a usable GPU is a :class:`UserInputError`."""
    if name not in DEVICE_CHOICES:
        raise UserInputError(f"unknown device {name!r}; choose from {', '.join(DEVICE_CHOICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserInputError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(name)


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Reduced precision on CUDA only (bfloat16 where supported); CPU runs in float32."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def run_detector(
    model: nn.Module, volume: PreprocessedVolume, device: torch.device, top_k: int = 3, segmentation: bool = False
) -> InferenceOutput:
    """Detect the organs of one preprocessed volume with ``model`` (already on ``device``).

    The model is run in eval mode and its previous train/eval mode is restored afterwards, so validation during
    training can use this same path.
    """
    was_training = model.training
    model.eval()
    autocast_dtype = _autocast_dtype(device)
    try:
        with (
            torch.inference_mode(),
            torch.autocast(device_type=device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None),
        ):
            outputs = model(volume.image[None].to(device), return_segmentation=segmentation)
    finally:
        model.train(was_training)
    organs = decode_detections(outputs, top_k=top_k)[0]
    labels = None
    if segmentation:
        seg_logits = outputs.get("seg_logits")
        if not seg_logits:
            raise UserInputError("this model has no segmentation heads; run it without segmentation output")
        finest = seg_logits[0].float().argmax(dim=1, keepdim=True).float()  # [1, 1, d0, d1, d2] label values
        labels = F.interpolate(finest, size=volume.network_shape, mode="nearest-exact")[0, 0].long().cpu()
    return InferenceOutput(organs=organs, segmentation=labels)
