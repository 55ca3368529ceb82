"""3D box conversions and overlap measures.

Boxes are normalised ``(c0, c1, c2, s0, s1, s2)`` per array axis (MONAI mode ``cccwhd``) or corner form
``(lo0, lo1, lo2, hi0, hi1, hi2)`` (MONAI mode ``xyzxyz``), in the voxel-edge convention of
:mod:`organdetr.config`: voxel ``v`` of an axis with ``n`` voxels spans ``[v / n, (v + 1) / n]``.

The conversions and the IoU, which ``organdetr detect`` needs to refine boxes, are three lines of torch each (tested
against MONAI's ``box_utils``): ``import monai`` loads every MONAI submodule, ~3 s that a detect process would
otherwise spend. The training losses' GIoU come from MONAI, imported inside the functions.
"""

from __future__ import annotations

import numpy as np
import torch


def center_size_to_corners(boxes: torch.Tensor) -> torch.Tensor:
    """``(c, s)`` -> ``(lo, hi)``; differentiable."""
    return torch.cat([boxes[..., :3] - boxes[..., 3:] / 2, boxes[..., :3] + boxes[..., 3:] / 2], dim=-1)


def corners_to_center_size(boxes: torch.Tensor) -> torch.Tensor:
    """``(lo, hi)`` -> ``(c, s)``; differentiable."""
    return torch.cat([(boxes[..., :3] + boxes[..., 3:]) / 2, boxes[..., 3:] - boxes[..., :3]], dim=-1)


def pairwise_giou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of every box in ``a`` with every box in ``b`` (center-size form), shape ``[A, B]``."""
    from monai.data.box_utils import box_giou

    return box_giou(center_size_to_corners(boxes_a), center_size_to_corners(boxes_b))


def pairwise_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """IoU of every box in ``a`` with every box in ``b`` (center-size form), shape ``[A, B]``."""
    a, b = center_size_to_corners(boxes_a)[:, None], center_size_to_corners(boxes_b)[None]
    overlap = (torch.minimum(a[..., 3:], b[..., 3:]) - torch.maximum(a[..., :3], b[..., :3])).clamp(min=0).prod(-1)
    union = boxes_a[:, None, 3:].prod(-1) + boxes_b[None, :, 3:].prod(-1) - overlap
    return overlap / union.clamp(min=torch.finfo(union.dtype).eps)


def matched_giou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Differentiable generalised IoU of ``a[n]`` with ``b[n]`` (center-size form), shape ``[N]``."""
    from monai.data.box_utils import box_pair_giou

    return box_pair_giou(center_size_to_corners(boxes_a), center_size_to_corners(boxes_b))


def boxes_from_label_map(
    label_map: np.ndarray | torch.Tensor, num_classes: int, min_voxels: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per organ present in an integer label map, its 0-based class index and normalised center-size box.

    The box spans the outer edges of the organ's first and last voxel along each array axis. Organs with fewer
    than ``min_voxels`` voxels are skipped (tiny fragments left by resampling are not detectable objects).
    """
    from monai.transforms import BoundingRect

    labels = torch.as_tensor(np.asarray(label_map))
    shape = torch.tensor(labels.shape, dtype=torch.float32)
    # One counting pass (a sort by torch.unique plus a pass per organ cost ~4x more: this runs per training sample).
    # Values outside 1..num_classes are not organs: clamped into background and one discarded bucket.
    counts = torch.bincount(labels.flatten().long().clamp(0, num_classes + 1), minlength=num_classes + 2)
    present = [v for v in range(1, num_classes + 1) if int(counts[v]) >= min_voxels]
    if not present:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, 6)
    one_hot = torch.stack([labels == v for v in present]).numpy()
    rects = torch.as_tensor(BoundingRect()(one_hot), dtype=torch.float32)  # [M, 6]: lo0, hi0(excl), lo1, ...
    lo, hi = rects[:, 0::2], rects[:, 1::2]
    corners = torch.cat([lo / shape, hi / shape], dim=1)
    return torch.tensor(present, dtype=torch.long) - 1, corners_to_center_size(corners)
