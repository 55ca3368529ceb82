"""Box refinement from the segmentation branch: the query says which organ is where, the voxels say exactly where.

For each organ the connected components of its label in the segmentation are candidates; the one whose bounding box
overlaps the query's box most is trusted when that overlap reaches ``min_iou``, and then replaces the query's box,
is averaged with it, or (``weighted``) is mixed with it corner by corner with weights calibrated on training cases
(:func:`fit_corner_mix`: the least-squares mix of two estimates whose errors differ by organ and edge, e.g. the
mandible's component is trusted for its inferior edge and its query for its superior one), the calibrated mean error
subtracted (``box_rule``).
Otherwise (no component, or only far-away ones: the segmentation has no support there) the query's box stays. The
detection records which it was. With ``score_by_agreement`` the score is scaled by that overlap, the agreement of two
estimates of the box, so that it predicts the box's quality.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from .box_ops import center_size_to_corners, corners_to_center_size, pairwise_iou
from .config import BoxRefinementConfig
from .postprocess import DecodedOrgan


def component_boxes(label_map: np.ndarray, label: int, min_voxels: int) -> torch.Tensor:
    """Normalised centre-size boxes ``[C, 6]`` of the connected components of ``label`` (face connectivity,
    voxel-edge convention)."""
    # SimpleITK, which reads every image anyway: scipy.ndimage would add ~0.6 s of imports to a detect process.
    import SimpleITK as sitk

    mask = label_map == label
    # Label only the organ's bounding box: a small part of the volume.
    spans = [
        np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis))) for axis in range(mask.ndim)
    ]
    if not spans[0].size:
        return torch.zeros(0, 6)
    offset = np.array([span[0] for span in spans])
    crop = mask[tuple(slice(span[0], span[-1] + 1) for span in spans)].astype(np.uint8)
    components = sitk.ConnectedComponent(sitk.GetImageFromArray(crop), False)
    shapes = sitk.LabelShapeStatisticsImageFilter()
    shapes.Execute(components)
    corners = []
    for component in shapes.GetLabels():
        if shapes.GetNumberOfPixels(component) < min_voxels:
            continue
        box = shapes.GetBoundingBox(component)  # SimpleITK index order: the array's axes reversed
        start, size = np.array(box[:3][::-1]) + offset, np.array(box[3:][::-1])
        corners.append(np.concatenate([start, start + size]) / np.tile(label_map.shape, 2))
    if not corners:
        return torch.zeros(0, 6)
    return corners_to_center_size(torch.as_tensor(np.stack(corners), dtype=torch.float32))


def best_component(
    organ: DecodedOrgan, label_map: np.ndarray, config: BoxRefinementConfig
) -> tuple[float, torch.Tensor | None]:
    """The overlap of the organ's query box with its best-overlapping component (0 when none) and that component's
    box when the overlap reaches ``min_iou``."""
    boxes = component_boxes(label_map, organ.class_index + 1, config.min_voxels)
    if not len(boxes):
        return 0.0, None
    overlaps = pairwise_iou(organ.box[None].float(), boxes)[0]
    best = int(overlaps.argmax())
    agreement = float(overlaps[best])
    return agreement, boxes[best] if agreement >= config.min_iou else None


def fit_corner_mix(query: np.ndarray, component: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per corner (columns of ``[N, 6]`` corner arrays in voxels), the component's share ``w`` in ``[0, 1]`` that
    minimises the squared error of ``w * component + (1 - w) * query``, and the mean error of that mix."""
    query_error, component_error = query - truth, component - truth
    difference = query_error - component_error
    spread = (difference**2).sum(axis=0)
    weights = np.divide((query_error * difference).sum(axis=0), spread, out=np.full(6, 0.5), where=spread > 0)
    weights = np.clip(weights, 0.0, 1.0)
    bias = (weights * component_error + (1.0 - weights) * query_error).mean(axis=0)
    return weights, bias


def _mixed(
    query: torch.Tensor,
    component: torch.Tensor,
    weights: Sequence[float],
    bias_voxels: Sequence[float],
    shape: torch.Tensor,
) -> torch.Tensor:
    """``weights`` x component + the rest x query, corner-wise, minus the bias; normalised centre-size boxes."""
    share = torch.tensor(weights, dtype=torch.float32)
    bias = torch.tensor(bias_voxels, dtype=torch.float32) / torch.cat([shape, shape])
    corners = share * center_size_to_corners(component[None])[0] + (1 - share) * center_size_to_corners(query[None])[0]
    return corners_to_center_size((corners - bias)[None])[0]


def refine_boxes(
    organs: list[DecodedOrgan], label_map: torch.Tensor, config: BoxRefinementConfig, class_names: Sequence[str]
) -> list[DecodedOrgan]:
    """Each organ's box refined by its best-overlapping segmented component (see the module docstring)."""
    labels = label_map.cpu().numpy()
    shape = torch.tensor(labels.shape, dtype=torch.float32)
    refined = []
    for organ in organs:
        agreement, component = best_component(organ, labels, config)
        name = class_names[organ.class_index]
        box = None
        if component is not None and config.box_rule == "replace":
            box = component
        elif component is not None and config.box_rule == "average":
            box = (organ.box.float() + component) / 2
        elif component is not None and config.box_rule == "weighted" and name in config.component_weights:
            bias = config.corner_bias_voxels.get(name, (0.0,) * 6)
            box = _mixed(organ.box.float(), component, config.component_weights[name], bias, shape)
        if box is not None:
            organ = replace(organ, box=box, box_source="segmentation")
        if config.score_by_agreement:
            organ = replace(organ, score=organ.score * agreement)
        refined.append(organ)
    return refined
