"""Scores of X-ray 3D localisation methods on scenes: the project's COCO-style 3D metrics
(:func:`organdetr.metrics.compute_metrics`, one box per organ and scene, unannotated organs ignored) plus the median
centre error, and the 2D AP50 of per-view boxes.

Every method (MV2D, carving, the mean-box prior) is scored by the same function on the same scenes, so the figures
compare.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..metrics import ImageDetections, average_precision, compute_metrics
from .scenes import Scene


def image_detections(predicted: np.ndarray, scene: Scene, scores: np.ndarray | None = None) -> ImageDetections:
    """The metrics' view of one scene: every finite predicted box ``[K, 6]`` (score 1 unless given) against the
    annotated organs' boxes."""
    found = np.isfinite(predicted).all(axis=1)
    present = np.isfinite(scene.boxes3d).all(axis=1) & scene.annotated
    chosen = np.ones(int(found.sum())) if scores is None else scores[found]
    return ImageDetections(
        pred_classes=torch.from_numpy(np.nonzero(found)[0]),
        pred_scores=torch.as_tensor(chosen, dtype=torch.float32),
        pred_boxes=torch.from_numpy(predicted[found]).float(),
        gt_classes=torch.from_numpy(np.nonzero(present)[0]),
        gt_boxes=torch.from_numpy(scene.boxes3d[present]).float(),
        annotated=torch.from_numpy(scene.annotated),
    )


def score_3d(
    predictions: Sequence[np.ndarray],
    scenes: Sequence[Scene],
    class_names: Sequence[str],
    scores: Sequence[np.ndarray] | None = None,
) -> dict:
    """AP50, mAP, mean IoU (over organs), median centre error (over organ instances) and per-organ figures."""
    scores = scores if scores is not None else [None] * len(scenes)
    images = [image_detections(p, s, c) for p, s, c in zip(predictions, scenes, scores, strict=True)]
    metrics = compute_metrics(images, class_names)
    errors = [
        float(np.linalg.norm(p[k, :3] - s.boxes3d[k, :3]))
        for p, s in zip(predictions, scenes, strict=True)
        for k in range(len(class_names))
        if s.annotated[k] and np.isfinite(s.boxes3d[k]).all() and np.isfinite(p[k]).all()
    ]
    per_class = [c for c in metrics.per_class if c.num_gt > 0]
    return {
        "AP50": metrics.AP50,
        "mAP": metrics.mAP,
        "mean_IoU": float(np.mean([c.mean_iou for c in per_class])),
        "median_centre_error_mm": float(np.median(errors)) if errors else None,
        "organs_with_a_box": f"{len(errors)}/{sum(c.num_gt for c in per_class)}",
        "per_organ": {
            c.name: {
                "AP50": c.AP50,
                "mean_IoU": c.mean_iou,
                "centre_error_mm": c.centre_error_mm,
                "size_error_mm": c.size_error_mm,
            }
            for c in per_class
        },
    }


def _iou_2d(a: np.ndarray, b: np.ndarray) -> float:
    low, high = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    intersection = float(np.prod(np.clip(high - low, 0.0, None)))
    union = float(np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2])) - intersection
    return intersection / union if union > 0 else 0.0


def ap50_2d(
    boxes: Sequence[np.ndarray], scores: Sequence[np.ndarray], scenes: Sequence[Scene], class_names: Sequence[str]
) -> dict:
    """COCO AP at IoU 0.5 of per-view boxes (``[V, K, 4]`` and scores ``[V, K]`` per scene, one box per view and
    organ) against the scenes' true silhouette boxes, per organ and averaged; views where an annotated organ is not
    seen count a detection there as a false positive."""
    per_organ = {}
    for k, name in enumerate(class_names):
        ranked, num_truths = [], 0
        for predicted, confidence, scene in zip(boxes, scores, scenes, strict=True):
            if not scene.annotated[k]:
                continue
            for view, truth in enumerate(scene.boxes2d[:, k]):
                seen = bool(np.isfinite(truth).all())
                num_truths += seen
                if np.isfinite(predicted[view, k]).all():
                    hit = seen and _iou_2d(predicted[view, k], truth) >= 0.5
                    ranked.append((float(confidence[view, k]), hit))
        if num_truths:
            ranked.sort(key=lambda item: -item[0])
            per_organ[name] = average_precision(np.array([hit for _, hit in ranked], dtype=bool), num_truths)
    return {"AP50": float(np.mean(list(per_organ.values()))), "per_organ": per_organ}
