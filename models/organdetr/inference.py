"""The single inference path of the detector, shared by the backend predictor and the evaluation.

``PreprocessedVolume -> network windows (organdetr.windows) -> network (inference mode; autocast on CUDA) -> one
decoded box per organ class and window -> the best-supported window per organ -> boxes refined by the segmentation
branch (organdetr.box_refinement), when the network has one`` and, on request, the segmentation (the branch's, else
the finest multiscale head's) stitched over the windows on the volume's grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .box_refinement import refine_boxes
from .config import DetectorConfig, SegmentationBranchConfig
from .errors import UserInputError
from .postprocess import DecodedOrgan, decode_detections
from .preprocess import PreprocessedVolume
from .segmentation_branch import crop_to, fine_regions, grown_region, on_input_grid, upsampled_region
from .windows import Window, plan_windows

DEVICE_CHOICES = ("auto", "cpu", "cuda")
# Rank penalty of a window's box that an inner window border cuts off: a whole view of the organ is preferred.
CUT_SCORE_PENALTY = 0.25


@dataclass
class InferenceOutput:
    """Detections of one volume, in network-normalised coordinates."""

    organs: list[DecodedOrgan]  # boxes normalised to the whole volume, one per class in class order
    presence: list[float]  # per class: its best probability in any window, vouched for by the segmentation
    query_boxes: list[torch.Tensor]  # per class: the chosen query's box before refinement
    segmentation: torch.Tensor | None  # LongTensor [D0, D1, D2] of label values on the network grid, CPU
    head_presence: list[float]  # per class: the presence before the segmentation vouched (the head's)
    segmented_voxels: list[float] | None  # per class: its voxels in the branch's segmentation, when it vouched


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


def _forward(model: nn.Module, image: torch.Tensor, device: torch.device, segmentation: bool) -> dict:
    autocast_dtype = _autocast_dtype(device)
    with (
        torch.inference_mode(),
        torch.autocast(device_type=device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None),
    ):
        return model(image[None].to(device), return_segmentation=segmentation)


def _window_organs(organs: list[DecodedOrgan], window: Window, shape: Sequence[int]) -> list[DecodedOrgan]:
    """A window's decoded organs with their boxes (and candidates' boxes) normalised to the whole volume."""
    return [
        replace(
            organ,
            box=window.box_to_volume(organ.box, shape),
            candidates=[(score, window.box_to_volume(box, shape)) for score, box in organ.candidates],
        )
        for organ in organs
    ]


def _add_window_segmentation(
    total: torch.Tensor,
    outputs: dict,
    branch_probabilities: torch.Tensor | None,
    window: Window,
    branch: SegmentationBranchConfig,
) -> None:
    """Add one window's class probabilities on the network grid into ``total [C, *volume]`` (CPU).

    With a segmentation branch (its stride-2 class probabilities ``branch_probabilities [C, *grid]``), only its region
    (where those see an organ, :func:`~organdetr.segmentation_branch.fine_regions`) is computed: the fine stage's
    probabilities, or the stride-2 ones upsampled (trilinear) there; outside it every organ is below the region
    threshold: background. Without a branch, the finest multiscale head's probabilities, upsampled over the whole
    window.
    """
    if branch_probabilities is None:
        if not outputs.get("seg_logits"):
            raise UserInputError("this model has no segmentation heads; run it without segmentation output")
        probabilities = outputs["seg_logits"][0].float().softmax(dim=1)
        upsampled = F.interpolate(probabilities, size=window.size, mode="trilinear", align_corners=False)
        window.add_to_volume(total, upsampled[0].cpu())
        return
    background = torch.zeros(total.shape[0], 1, 1, 1)
    background[0] = 1.0
    window.add_to_volume(total, background.expand(-1, *window.size))
    if "seg_fine_logits" in outputs:
        fine = outputs["seg_fine_logits"][0]
        if fine is None:
            return
        region, probabilities = fine.region, fine.logits.float().softmax(dim=0)
    else:
        threshold, margin = branch.fine_region_threshold, branch.fine_region_margin
        (coarse_region,) = fine_regions(branch_probabilities[None], threshold, margin)
        if coarse_region is None:
            return
        read = grown_region(coarse_region, 1, branch_probabilities.shape[1:])
        values = upsampled_region(branch_probabilities, read)
        region, probabilities = on_input_grid(coarse_region), crop_to(values, on_input_grid(read), coarse_region)
    window.add_region_to_volume(total, region, (probabilities - background.to(probabilities.device)).cpu())


class BranchVoxelCounter:
    """Voxels of each organ in the branch's segmentation of a volume, stitched window by window on the branch's own
    grid (stride 2: no upsampling; a window with an odd start lands half a branch voxel off, which a voxel count
    does not feel)."""

    def __init__(self, volume_shape: Sequence[int]) -> None:
        self.volume_shape = tuple(volume_shape)
        self.total: torch.Tensor | None = None  # summed class probabilities [C, *volume on the branch grid]
        self.strides: list[int] = []

    def add(self, window: Window, probabilities: torch.Tensor) -> None:
        """Add one window's class probabilities ``[C, *branch grid]``."""
        if self.total is None:
            self.strides = [w // n for w, n in zip(window.size, probabilities.shape[1:], strict=True)]
            grid = [-(-n // k) for n, k in zip(self.volume_shape, self.strides, strict=True)]
            self.total = torch.zeros((probabilities.shape[0], *grid))
        window.coarsened(self.strides).add_to_volume(self.total, probabilities)

    def voxels(self) -> torch.Tensor:
        """``FloatTensor [K]``: each organ's branch voxels (argmax of the summed probabilities), each counted as the
        network-grid voxels it covers."""
        if self.total is None:
            raise ValueError("no window was added")
        labels = self.total.max(dim=0).indices  # max().indices: argmax's labels, faster over the channel axis on CPU
        counts = torch.bincount(labels.flatten(), minlength=self.total.shape[0])[1:]
        return counts.float() * math.prod(self.strides)


def segmentation_supported_presence(
    presence: list[float], voxels: Sequence[float], min_voxels: Sequence[int]
) -> list[float]:
    """Each organ's presence probability scaled by ``min(1, its voxels / its min_voxels)`` (0: kept)."""
    return [
        p * min(1.0, float(count) / needed) if needed > 0 else p
        for p, count, needed in zip(presence, voxels, min_voxels, strict=True)
    ]


def run_detector(
    model: nn.Module,
    volume: PreprocessedVolume,
    device: torch.device,
    config: DetectorConfig,
    top_k: int = 3,
    segmentation: bool = False,
) -> InferenceOutput:
    """Detect the organs of one preprocessed volume with ``model`` (already on ``device``), as ``config`` says.

    The network sees windows of ``config.preprocess.spatial_size``. Each organ's detection comes from the window
    that supports it best: the highest score, with a penalty for a box that a window border inside the volume cuts
    off. A network with a segmentation branch segments whenever its result is used: vouching for each organ's
    presence (``config.presence``: the organ's voxels, stitched on the branch's own grid) and, stitched on the
    volume's grid, when asked for or refining the boxes (``config.refinement``). The model is run in eval mode and its
    previous train/eval mode is restored afterwards, so validation during training can use this same path.
    """
    shape = volume.network_shape
    windows = plan_windows(shape, config.preprocess.spatial_size, config.preprocess.window_overlap)
    has_branch = config.model.segmentation_branch.enabled
    refine = config.refinement.enabled and has_branch
    vouching = has_branch and bool(config.presence.min_segmented_voxels)
    stitch = segmentation or refine
    was_training = model.training
    model.eval()
    per_window: list[list[tuple[float, DecodedOrgan]]] = []  # per window, per class: (rank, organ)
    seg_total = None
    branch_voxels = BranchVoxelCounter(shape)
    try:
        for current in windows:
            outputs = _forward(model, current.extract(volume.image), device, stitch or vouching)
            organs = decode_detections(outputs, top_k=top_k)[0]
            ranks = [o.score - (CUT_SCORE_PENALTY if current.cuts_box(o.box, shape) else 0.0) for o in organs]
            per_window.append(list(zip(ranks, _window_organs(organs, current, shape), strict=True)))
            # The branch's stride-2 probabilities, once: they vouch for presence and place the stitched region.
            branch_probabilities = (
                outputs["seg_full_logits"][0].float().softmax(dim=0) if has_branch and (stitch or vouching) else None
            )
            if vouching:
                branch_voxels.add(current, branch_probabilities.cpu())
            if stitch:
                if seg_total is None:
                    seg_total = torch.zeros((config.model.num_classes + 1, *shape))
                branch_config = config.model.segmentation_branch
                _add_window_segmentation(seg_total, outputs, branch_probabilities, current, branch_config)
    finally:
        model.train(was_training)
    per_class = list(zip(*per_window, strict=True))
    organs = [max(views, key=lambda view: view[0])[1] for views in per_class]
    head_presence = [max(organ.presence for _, organ in views) for views in per_class]
    presence, organ_voxels = head_presence, None
    query_boxes = [organ.box for organ in organs]
    # max().indices, not argmax(): the same labels, ~7x faster over the channel axis on CPU (torch 2.13).
    labels = seg_total.max(dim=0).indices if seg_total is not None else None
    if vouching:
        min_voxels = [config.presence.min_segmented_voxels.get(name, 0) for name in config.class_names]
        organ_voxels = branch_voxels.voxels().tolist()
        presence = segmentation_supported_presence(head_presence, organ_voxels, min_voxels)
    if refine and labels is not None:
        organs = refine_boxes(organs, labels, config.refinement, config.class_names)
    return InferenceOutput(
        organs=organs,
        presence=presence,
        query_boxes=query_boxes,
        segmentation=labels if segmentation else None,
        head_presence=head_presence,
        segmented_voxels=organ_voxels,
    )
