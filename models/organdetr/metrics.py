"""COCO-style 3D detection metrics for organ detection (as in Transoar / nnDetection, see ORGAN_DETR.md).

* At most ONE detection per image and class (the highest-scoring one); greedy matching by descending score.
* 3D box IoU; AP with 101 recall points averaged over IoU 0.50:0.05:0.95 (mAP), at 0.50 (AP50) and 0.75 (AP75);
  mAR = recall (max 1 detection) averaged over the same thresholds; mAP_nndet over IoU 0.10:0.05:0.50.
* Classes without any ground truth in the whole set are EXCLUDED from the means (reported as ``None``).
* Partial labels: in an image where a class is not annotated, its detections are ignored (neither TP nor FP).

Boxes are ``(c0, c1, c2, s0, s1, s2)`` in any axis-aligned frame (IoU does not change under per-axis scaling);
pass millimetres to get the centre and size errors in mm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.stats
import torch

from .box_ops import pairwise_iou

COCO_IOUS = tuple(float(t) for t in np.round(np.arange(0.50, 0.951, 0.05), 2))
NNDET_IOUS = tuple(float(t) for t in np.round(np.arange(0.10, 0.501, 0.05), 2))
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
SUMMARY_KEYS = ("mAP", "AP50", "AP75", "mAR", "mAP_nndet")


@dataclass
class ImageDetections:
    """Predictions and ground truth of one image (class indices are 0-based)."""

    pred_classes: torch.Tensor  # [P] long
    pred_scores: torch.Tensor  # [P] float
    pred_boxes: torch.Tensor  # [P, 6] center-size
    gt_classes: torch.Tensor  # [G] long
    gt_boxes: torch.Tensor  # [G, 6] center-size
    annotated: torch.Tensor  # [K] bool: classes contoured in this image
    presence: torch.Tensor | None = None  # [K] predicted probability that each class is in the image


@dataclass
class PresenceMetrics:
    """How often annotated organs are judged present / absent correctly (threshold on the presence probability).

    An organ counts as present in an image when it is annotated there and has a ground-truth box; as absent when it
    is annotated and has none (for example cut off by the field of view). Unannotated organs are not counted.
    """

    threshold: float
    present_total: int = 0
    present_reported: int = 0  # present organs judged present (goal: all)
    absent_total: int = 0
    absent_reported: int = 0  # absent organs judged present (goal: none)

    @property
    def present_recall(self) -> float | None:
        return self.present_reported / self.present_total if self.present_total else None

    def add(self, image: ImageDetections) -> None:
        assert image.presence is not None
        for k in image.annotated.nonzero()[:, 0].tolist():
            reported = float(image.presence[k]) >= self.threshold
            if bool((image.gt_classes == k).any()):
                self.present_total += 1
                self.present_reported += int(reported)
            else:
                self.absent_total += 1
                self.absent_reported += int(reported)

    def to_dict(self) -> dict:
        return {**self.__dict__, "present_recall": self.present_recall}


@dataclass
class ClassMetrics:
    """Per-organ figures; ``None`` where the organ has no ground truth (or no detection, for the errors)."""

    name: str
    num_gt: int
    num_detected: int  # ground-truth organs with a detection of their class in their image
    AP: float | None
    AP50: float | None
    AP75: float | None
    AR: float | None
    AP_nndet: float | None
    mean_iou: float | None  # IoU of the class's detection with the ground truth (0 where none), averaged
    centre_error_mm: float | None  # distance of box centres, over detected organs
    size_error_mm: float | None  # mean absolute edge-length difference over the 3 axes, over detected organs
    # Spearman rank correlation of the detections' scores with their IoU (do scores rank boxes by quality?).
    score_iou_spearman: float | None = None


@dataclass
class DetectionMetrics:
    """Summary (fractions in 0..1, ``None`` when no class has ground truth) and per-class details."""

    mAP: float | None
    AP50: float | None
    AP75: float | None
    mAR: float | None
    mAP_nndet: float | None
    num_images: int
    per_class: list[ClassMetrics] = field(default_factory=list)
    presence: PresenceMetrics | None = None  # when the images carry presence probabilities
    query_boxes: DetectionMetrics | None = None  # the same images with the unrefined query boxes
    segmentation_dice: dict[str, float | None] | None = None  # per organ, mean over images that annotate it
    per_case: list[dict] | None = None  # per image: its name and, per annotated organ, presence, score and IoU
    # Over every organ's detection with ground truth, all organs pooled (see ClassMetrics.score_iou_spearman).
    score_iou_spearman: float | None = None

    def to_dict(self) -> dict:
        summary = {key: getattr(self, key) for key in SUMMARY_KEYS}
        result = {
            **summary,
            "num_images": self.num_images,
            "per_class": {c.name: {k: v for k, v in c.__dict__.items() if k != "name"} for c in self.per_class},
            "presence": None if self.presence is None else self.presence.to_dict(),
            "score_iou_spearman": self.score_iou_spearman,
        }
        if self.query_boxes is not None:
            result["query_boxes"] = self.query_boxes.to_dict()
        if self.segmentation_dice is not None:
            result["segmentation_dice"] = self.segmentation_dice
        if self.per_case is not None:
            result["per_case"] = self.per_case
        return result


def segmentation_dice(predicted: torch.Tensor, truth: torch.Tensor, annotated: torch.Tensor) -> list[float]:
    """Dice of each organ's predicted and true voxels (label value = class index + 1); NaN where the organ is not
    annotated, or absent from both."""
    scores = []
    for k, known in enumerate(annotated.tolist()):
        pred, true = predicted == k + 1, truth.long() == k + 1
        total = int(pred.sum()) + int(true.sum())
        scores.append(2.0 * int((pred & true).sum()) / total if known and total else float("nan"))
    return scores


def average_precision(tp: np.ndarray, num_gt: int) -> float:
    """COCO 101-point interpolated AP of detections already sorted by descending score (``tp`` booleans)."""
    if len(tp) == 0:
        return 0.0
    tp_cum = np.cumsum(tp)
    recall = tp_cum / num_gt
    precision = tp_cum / np.arange(1, len(tp) + 1)
    # Precision envelope: the best precision at any recall at least as high.
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    positions = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.where(positions < len(precision), precision[np.minimum(positions, len(precision) - 1)], 0.0)
    return float(sampled.mean())


@dataclass
class _ClassRecords:
    """One class's kept detections (one per image at most) and their IoUs with that image's ground truths."""

    scores: list[float] = field(default_factory=list)
    image_of_detection: list[int] = field(default_factory=list)
    ious: dict[int, np.ndarray] = field(default_factory=dict)  # image -> [gts of the class in that image]
    num_gt: int = 0


def _top_detection(image: ImageDetections, k: int) -> int | None:
    """Index of the highest-scoring prediction of class ``k`` (first on ties), if any."""
    indices = torch.nonzero(image.pred_classes == k).flatten()
    if len(indices) == 0:
        return None
    return int(indices[torch.argmax(image.pred_scores[indices])])


def _match(records: _ClassRecords, threshold: float) -> np.ndarray:
    """Greedy matching by descending score at one IoU threshold -> TP flags in score order."""
    order = np.argsort(-np.asarray(records.scores), kind="mergesort")
    tp = np.zeros(len(order), dtype=bool)
    for rank, det in enumerate(order):
        ious = records.ious[records.image_of_detection[det]]
        # One detection per image and class: it can take at most one ground truth, the best overlapping one.
        tp[rank] = bool(ious.size) and float(ious.max()) >= threshold
    return tp


def compute_metrics(
    images: Sequence[ImageDetections], class_names: Sequence[str], presence_threshold: float = 0.5
) -> DetectionMetrics:
    """COCO-style 3D metrics with one detection per image and class; see the module docstring. With presence
    probabilities in every image, also the :class:`PresenceMetrics` at ``presence_threshold``."""
    per_class: list[ClassMetrics] = []
    score_iou_pairs: list[tuple[float, float]] = []
    for k, name in enumerate(class_names):
        records = _ClassRecords()
        ious_of_gt: list[float] = []
        centre_errors: list[float] = []
        size_errors: list[float] = []
        pairs: list[tuple[float, float]] = []  # (score, IoU) of each detection with ground truth
        for index, image in enumerate(images):
            if not bool(image.annotated[k]):
                continue  # not contoured here: its detections are neither right nor wrong
            gt = image.gt_boxes[image.gt_classes == k].float()
            records.num_gt += len(gt)
            best = _top_detection(image, k)
            if best is None:
                ious_of_gt.extend([0.0] * len(gt))
                continue
            box = image.pred_boxes[best].float()
            iou = pairwise_iou(box[None], gt)[0].numpy() if len(gt) else np.zeros(0)
            records.scores.append(float(image.pred_scores[best]))
            records.image_of_detection.append(index)
            records.ious[index] = iou
            if len(gt):
                nearest = int(iou.argmax())
                ious_of_gt.extend([float(iou[nearest])] + [0.0] * (len(gt) - 1))
                centre_errors.append(float(torch.linalg.norm(box[:3] - gt[nearest, :3])))
                size_errors.append(float((box[3:] - gt[nearest, 3:]).abs().mean()))
                pairs.append((records.scores[-1], float(iou[nearest])))
        score_iou_pairs += pairs
        per_class.append(_class_metrics(name, records, ious_of_gt, centre_errors, size_errors, pairs))
    scored = [c for c in per_class if c.num_gt > 0]

    def mean(key: str) -> float | None:
        return float(np.mean([getattr(c, key) for c in scored])) if scored else None

    presence = None
    if images and all(image.presence is not None for image in images):
        presence = PresenceMetrics(threshold=presence_threshold)
        for image in images:
            presence.add(image)

    return DetectionMetrics(
        mAP=mean("AP"),
        AP50=mean("AP50"),
        AP75=mean("AP75"),
        mAR=mean("AR"),
        mAP_nndet=mean("AP_nndet"),
        num_images=len(images),
        per_class=per_class,
        presence=presence,
        score_iou_spearman=_spearman(score_iou_pairs),
    )


def _spearman(pairs: Sequence[tuple[float, float]]) -> float | None:
    """Spearman's rank correlation of (score, IoU) pairs; ``None`` when either side has no spread."""
    if len(pairs) < 3:
        return None
    scores, ious = np.array(pairs).T
    if np.ptp(scores) == 0 or np.ptp(ious) == 0:
        return None
    return float(scipy.stats.spearmanr(scores, ious).statistic)


def _class_metrics(
    name: str,
    records: _ClassRecords,
    ious_of_gt: list[float],
    centre_errors: list[float],
    size_errors: list[float],
    score_iou_pairs: Sequence[tuple[float, float]],
) -> ClassMetrics:
    if records.num_gt == 0:
        return ClassMetrics(name, 0, 0, None, None, None, None, None, None, None, None)
    matches = {t: _match(records, t) for t in sorted(set(COCO_IOUS) | set(NNDET_IOUS))}
    ap = {t: average_precision(matches[t], records.num_gt) for t in matches}
    recall = {t: float(matches[t].sum()) / records.num_gt for t in COCO_IOUS}
    return ClassMetrics(
        name=name,
        num_gt=records.num_gt,
        num_detected=len(centre_errors),
        AP=float(np.mean([ap[t] for t in COCO_IOUS])),
        AP50=ap[0.5],
        AP75=ap[0.75],
        AR=float(np.mean(list(recall.values()))),
        AP_nndet=float(np.mean([ap[t] for t in NNDET_IOUS])),
        mean_iou=float(np.mean(ious_of_gt)),
        centre_error_mm=float(np.mean(centre_errors)) if centre_errors else None,
        size_error_mm=float(np.mean(size_errors)) if size_errors else None,
        score_iou_spearman=_spearman(score_iou_pairs),
    )
