"""3D box conversions and overlap measures (MONAI box_utils underneath).

Boxes are normalised ``(c0, c1, c2, s0, s1, s2)`` per array axis (MONAI mode ``cccwhd``) or corner form
``(lo0, lo1, lo2, hi0, hi1, hi2)`` (MONAI mode ``xyzxyz``), in the voxel-edge convention of
:mod:`organdetr.config`: voxel ``v`` of an axis with ``n`` voxels spans ``[v / n, (v + 1) / n]``.

MONAI is imported inside the functions: ``import monai`` loads every MONAI submodule, seconds that ``organdetr
detect`` does not spend unless it refines boxes.
"""

from __future__ import annotations

import numpy as np
import torch

CENTER_SIZE = "cccwhd"
CORNERS = "xyzxyz"


def center_size_to_corners(boxes: torch.Tensor) -> torch.Tensor:
    """``(c, s)`` -> ``(lo, hi)``; differentiable."""
    from monai.data.box_utils import convert_box_mode

    return convert_box_mode(boxes, src_mode=CENTER_SIZE, dst_mode=CORNERS)


def corners_to_center_size(boxes: torch.Tensor) -> torch.Tensor:
    """``(lo, hi)`` -> ``(c, s)``; differentiable."""
    from monai.data.box_utils import convert_box_mode

    return convert_box_mode(boxes, src_mode=CORNERS, dst_mode=CENTER_SIZE)


def pairwise_giou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of every box in ``a`` with every box in ``b`` (center-size form), shape ``[A, B]``."""
    from monai.data.box_utils import box_giou

    return box_giou(center_size_to_corners(boxes_a), center_size_to_corners(boxes_b))


def pairwise_iou(boxes_a: torch.Tensor, boxes_b: torch.Tensor) -> torch.Tensor:
    """IoU of every box in ``a`` with every box in ``b`` (center-size form), shape ``[A, B]``."""
    from monai.data.box_utils import box_iou

    return box_iou(center_size_to_corners(boxes_a), center_size_to_corners(boxes_b))


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

    labels = torch.as_tensor(np.asarray(label_map)).long()
    shape = torch.tensor(labels.shape, dtype=torch.float32)
    present = [int(v) for v in torch.unique(labels) if 1 <= int(v) <= num_classes]
    present = [v for v in present if int((labels == v).sum()) >= min_voxels]
    if not present:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, 6)
    one_hot = torch.stack([labels == v for v in present]).numpy()
    rects = torch.as_tensor(BoundingRect()(one_hot), dtype=torch.float32)  # [M, 6]: lo0, hi0(excl), lo1, ...
    lo, hi = rects[:, 0::2], rects[:, 1::2]
    corners = torch.cat([lo / shape, hi / shape], dim=1)
    return torch.tensor(present, dtype=torch.long) - 1, corners_to_center_size(corners)
