"""Box refinement from the segmentation branch: the query says which organ is where, the voxels say exactly where.

For each organ the connected components of its label in the segmentation are candidates; the one whose bounding box
overlaps the query's box most replaces it when that overlap reaches ``min_iou``. Otherwise (no component, or only
far-away ones: the segmentation has no support there) the query's box stays. The detection records which it was.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from scipy import ndimage

from .box_ops import corners_to_center_size, pairwise_iou
from .config import BoxRefinementConfig
from .postprocess import DecodedOrgan


def component_boxes(label_map: np.ndarray, label: int, min_voxels: int) -> torch.Tensor:
    """Normalised centre-size boxes ``[C, 6]`` of the connected components of ``label`` (voxel-edge convention)."""
    components, count = ndimage.label(label_map == label)
    if count == 0:
        return torch.zeros(0, 6)
    shape = np.asarray(label_map.shape, dtype=np.float64)
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    corners = [
        np.concatenate([[s.start for s in slices], [s.stop for s in slices]]) / np.tile(shape, 2)
        for index, slices in enumerate(ndimage.find_objects(components), start=1)
        if sizes[index] >= min_voxels
    ]
    if not corners:
        return torch.zeros(0, 6)
    return corners_to_center_size(torch.as_tensor(np.stack(corners), dtype=torch.float32))


def refine_boxes(
    organs: list[DecodedOrgan], label_map: torch.Tensor, config: BoxRefinementConfig
) -> list[DecodedOrgan]:
    """Each organ's box replaced by its best-overlapping segmented component (see the module docstring)."""
    labels = label_map.cpu().numpy()
    refined = []
    for organ in organs:
        boxes = component_boxes(labels, organ.class_index + 1, config.min_voxels)
        if len(boxes):
            overlaps = pairwise_iou(organ.box[None].float(), boxes)[0]
            best = int(overlaps.argmax())
            if float(overlaps[best]) >= config.min_iou:
                organ = replace(organ, box=boxes[best], box_source="segmentation")
        refined.append(organ)
    return refined
