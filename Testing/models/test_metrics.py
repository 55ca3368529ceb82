"""COCO-style 3D metrics against values computed by hand on tiny synthetic cases.

Boxes are in mm, center-size. A 10 mm cube at the origin shifted by ``s`` mm along one axis overlaps the original by
``10 * 10 * (10 - s)`` mm^3, so its IoU is ``(10 - s) / (10 + s)``; the 101-point AP of one true and one false
detection where the true one scores higher is ``51 / 101`` (precision 1 up to recall 0.5, then nothing).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from organdetr.evaluate import format_table
from organdetr.metrics import COCO_IOUS, NNDET_IOUS, ImageDetections, average_precision, compute_metrics

NAMES = ("A", "B")
CUBE = [0.0, 0.0, 0.0, 10.0, 10.0, 10.0]
FAR = [100.0, 0.0, 0.0, 10.0, 10.0, 10.0]


def shifted(s: float) -> list[float]:
    return [s, 0.0, 0.0, 10.0, 10.0, 10.0]


def image(preds: list[tuple[int, float, list[float]]], gts: list[tuple[int, list[float]]], annotated=(True, True)):
    return ImageDetections(
        pred_classes=torch.tensor([p[0] for p in preds], dtype=torch.long),
        pred_scores=torch.tensor([p[1] for p in preds]),
        pred_boxes=torch.tensor([p[2] for p in preds]).reshape(-1, 6),
        gt_classes=torch.tensor([g[0] for g in gts], dtype=torch.long),
        gt_boxes=torch.tensor([g[1] for g in gts]).reshape(-1, 6),
        annotated=torch.tensor(annotated),
    )


def test_thresholds() -> None:
    assert pytest.approx([0.5 + 0.05 * i for i in range(10)]) == COCO_IOUS
    assert pytest.approx([0.1 + 0.05 * i for i in range(9)]) == NNDET_IOUS


def test_average_precision_by_hand() -> None:
    # TP, FP, TP with 2 ground truths: precision envelope 1 up to recall 0.5 (51 points), 2/3 above (50 points).
    assert average_precision(np.array([True, False, True]), 2) == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert average_precision(np.array([False, True]), 2) == pytest.approx(51 * 0.5 / 101)
    assert average_precision(np.array([], dtype=bool), 3) == 0.0


def test_perfect_detector_scores_one_and_class_without_gt_is_excluded() -> None:
    images = [
        image([(0, 0.9, CUBE), (1, 0.8, FAR)], [(0, CUBE)]),  # B detected but B has no ground truth anywhere
        image([(0, 0.7, shifted(0.0))], [(0, CUBE)]),
    ]
    metrics = compute_metrics(images, NAMES)
    for key in ("mAP", "AP50", "AP75", "mAR", "mAP_nndet"):
        assert getattr(metrics, key) == pytest.approx(1.0)
    a, b = metrics.per_class
    assert (a.num_gt, a.num_detected, a.mean_iou, a.centre_error_mm, a.size_error_mm) == (2, 2, 1.0, 0.0, 0.0)
    assert b.num_gt == 0 and b.AP is None and b.mean_iou is None  # excluded, neither 0 nor -1
    assert json.loads(json.dumps(metrics.to_dict()))["per_class"]["B"]["AP"] is None


def test_a_miss_lowers_ap_as_computed_by_hand() -> None:
    images = [image([(0, 0.9, CUBE)], [(0, CUBE)]), image([(0, 0.8, FAR)], [(0, CUBE)])]
    metrics = compute_metrics(images, NAMES)
    assert metrics.mAP == pytest.approx(51 / 101)
    assert pytest.approx(51 / 101) == metrics.AP50
    assert metrics.mAR == pytest.approx(0.5)
    a = metrics.per_class[0]
    assert a.mean_iou == pytest.approx(0.5)  # 1 and 0
    assert a.centre_error_mm == pytest.approx(50.0)  # (0 + 100) / 2


def test_a_missed_detection_with_the_highest_score_ranks_first() -> None:
    images = [image([(0, 0.9, FAR)], [(0, CUBE)]), image([(0, 0.5, CUBE)], [(0, CUBE)])]
    assert compute_metrics(images, NAMES).mAP == pytest.approx(51 * 0.5 / 101)


def test_iou_threshold_dependence() -> None:
    # Shift 2 mm: IoU = 8 / 12 = 2/3 -> a hit at 0.50, 0.55, 0.60, 0.65 (4 of 10 COCO thresholds), all nnDet ones.
    metrics = compute_metrics([image([(0, 0.6, shifted(2.0))], [(0, CUBE)])], NAMES)
    assert metrics.mAP == pytest.approx(0.4)
    assert pytest.approx(1.0) == metrics.AP50
    assert pytest.approx(0.0) == metrics.AP75
    assert metrics.mAR == pytest.approx(0.4)
    assert metrics.mAP_nndet == pytest.approx(1.0)
    a = metrics.per_class[0]
    assert a.mean_iou == pytest.approx(2 / 3)
    assert a.centre_error_mm == pytest.approx(2.0)
    assert a.size_error_mm == pytest.approx(0.0)


def test_only_the_best_detection_per_image_and_class_counts() -> None:
    # The lower-scoring correct box of the same class is dropped (max one detection per class and image).
    metrics = compute_metrics([image([(0, 0.9, FAR), (0, 0.5, CUBE)], [(0, CUBE)])], NAMES)
    assert metrics.mAP == pytest.approx(0.0)
    assert metrics.mAR == pytest.approx(0.0)


def test_partial_labels_ignore_detections_of_unannotated_classes() -> None:
    # Image 2 does not annotate A: its confident A detection is neither a true nor a false positive.
    ignored = [
        image([(0, 0.5, CUBE)], [(0, CUBE)]),
        image([(0, 0.9, FAR)], [], annotated=(False, True)),
    ]
    assert compute_metrics(ignored, NAMES).mAP == pytest.approx(1.0)
    # The same detection in an image that annotates A (and has no A) is a false positive ranked first:
    # FP then TP for one ground truth -> precision 1/2 at every recall point.
    counted = [ignored[0], image([(0, 0.9, FAR)], [], annotated=(True, True))]
    assert compute_metrics(counted, NAMES).mAP == pytest.approx(0.5)


def test_two_classes_are_averaged_and_table_is_readable() -> None:
    images = [image([(0, 0.9, CUBE), (1, 0.9, FAR)], [(0, CUBE), (1, CUBE)])]  # A right, B missed
    metrics = compute_metrics(images, NAMES)
    assert metrics.mAP == pytest.approx(0.5)
    assert [c.AP for c in metrics.per_class] == pytest.approx([1.0, 0.0])
    table = format_table(metrics)
    assert "mAP 0.500" in table and "fractions" in table and table.splitlines()[2].startswith("A")


def test_no_ground_truth_at_all_gives_none() -> None:
    metrics = compute_metrics([image([(0, 0.9, CUBE)], [])], NAMES)
    assert metrics.mAP is None and metrics.mAR is None


def test_score_iou_rank_correlation() -> None:
    # Shifts 0, 2, 4, 6 mm give IoUs 1, 0.67, 0.43, 0.25: scores in the same order rank perfectly, reversed ones
    # perfectly wrong; class B's detections are pooled with A's in the summary.
    ranked = [image([(0, score, shifted(s))], [(0, CUBE)]) for score, s in ((0.9, 0), (0.8, 2), (0.7, 4), (0.6, 6))]
    reversed_ = [image([(1, score, shifted(s))], [(1, CUBE)]) for score, s in ((0.6, 0), (0.7, 2), (0.8, 4), (0.9, 6))]
    metrics = compute_metrics(ranked + reversed_, NAMES)
    assert metrics.per_class[0].score_iou_spearman == pytest.approx(1.0)
    assert metrics.per_class[1].score_iou_spearman == pytest.approx(-1.0)
    assert metrics.score_iou_spearman == pytest.approx(0.0, abs=0.3)
    assert json.loads(json.dumps(metrics.to_dict()))["score_iou_spearman"] == pytest.approx(metrics.score_iou_spearman)
    # Equal scores say nothing about quality: no correlation is reported.
    flat = [image([(0, 0.9, shifted(s))], [(0, CUBE)]) for s in (0, 2, 4)]
    assert compute_metrics(flat, NAMES).score_iou_spearman is None
    assert "rho(score, IoU)" in format_table(metrics)
