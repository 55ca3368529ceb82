"""Box refinement from the segmentation branch: the query says which organ is where, the voxels say exactly where.

For each organ the connected components of its label in the segmentation are candidates; the one whose bounding box
overlaps the query's box most is trusted when that overlap reaches ``min_iou``, and then replaces the query's box or
is averaged with it (``box_rule``). Otherwise (no component, or only far-away ones: the segmentation has no support
there) the query's box stays. The detection records which it was. With ``score_by_agreement`` the score is scaled by
that overlap, the agreement of two estimates of the box, so that it predicts the box's quality.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from .box_ops import corners_to_center_size, pairwise_iou
from .config import BoxRefinementConfig
from .postprocess import DecodedOrgan


def component_boxes(label_map: np.ndarray, label: int, min_voxels: int) -> torch.Tensor:
    """Normalised centre-size boxes ``[C, 6]`` of the connected components of ``label`` (voxel-edge convention)."""
    from scipy import ndimage  # here: ~0.3 s to import, and models without refinement never need it

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
    """Each organ's box refined by its best-overlapping segmented component (see the module docstring)."""
    labels = label_map.cpu().numpy()
    refined = []
    for organ in organs:
        boxes = component_boxes(labels, organ.class_index + 1, config.min_voxels)
        agreement, component = 0.0, None
        if len(boxes):
            overlaps = pairwise_iou(organ.box[None].float(), boxes)[0]
            best = int(overlaps.argmax())
            agreement, component = float(overlaps[best]), boxes[best]
        if component is not None and agreement >= config.min_iou and config.box_rule != "keep":
            box = component if config.box_rule == "replace" else (organ.box.float() + component) / 2
            organ = replace(organ, box=box, box_source="segmentation")
        if config.score_by_agreement:
            organ = replace(organ, score=organ.score * agreement)
        refined.append(organ)
    return refined
