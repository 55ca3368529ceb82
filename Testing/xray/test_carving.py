"""Carving on the bundled CT from true silhouettes: the carved box contains the organ and is close to its box."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from organdetr.box_ops import pairwise_iou
from organdetr.xray.camera import CArmGeometry
from organdetr.xray.carving import carve_box, carve_boxes, field_of_view_cube
from organdetr.xray.scenes import scan_centre
from organdetr.xray.silhouettes import silhouette_boxes, world_box
from xray_case import HeadNeckCase


def carve_case(case: HeadNeckCase, num_views: int, arc_deg: float = 360.0) -> tuple[np.ndarray, np.ndarray]:
    """(carved, true) centre-size boxes [7, 6] from the true silhouettes of ``num_views`` views; the true boxes are
    cut to the carving region (the field every view sees: the spinal cord runs beyond it)."""
    centre = scan_centre(case.ct) + np.array([-22.0, 14.0, 27.0])
    geometry = CArmGeometry(num_views=num_views, arc_deg=arc_deg, start_angle_deg=11.0, isocenter=tuple(centre))
    cameras = geometry.cameras()
    boxes2d = np.stack([silhouette_boxes(cameras, c) for c in case.corners], axis=1)
    low, high = field_of_view_cube(cameras, centre)
    truth = np.stack([world_box(np.clip(c, low, high)) for c in case.corners])
    return carve_boxes(cameras, boxes2d, low, high), truth


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.diag(pairwise_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy())


def contains(outer: np.ndarray, inner: np.ndarray, tolerance: float = 1e-3) -> bool:
    return bool(
        (outer[:, :3] - outer[:, 3:] / 2 <= inner[:, :3] - inner[:, 3:] / 2 + tolerance).all()
        and (outer[:, :3] + outer[:, 3:] / 2 >= inner[:, :3] + inner[:, 3:] / 2 - tolerance).all()
    )


def test_carving_from_ten_true_silhouettes_recovers_the_label_boxes(pt_201: HeadNeckCase) -> None:
    carved, truth = carve_case(pt_201, 10)
    ious = iou(carved, truth)
    print("carving IoU per organ, 10 views:", np.round(ious, 3))
    # The visual hull contains the organ: every carved box contains its true box ...
    assert contains(carved, truth)
    # ... and is close to it: the hull of ten box pyramids is a little larger than the organ (most for the thin,
    # curved spinal cord, whose footprint in the axial plane is long and narrow).
    assert ious.min() > 0.5 and ious.mean() > 0.78


def test_fewer_views_carve_looser_boxes_that_still_contain_the_organ(pt_201: HeadNeckCase) -> None:
    means = []
    for views, arc in ((2, 90.0), (3, 360.0), (5, 360.0)):  # two views: AP and lateral (opposed ones see alike)
        carved, truth = carve_case(pt_201, views, arc)
        assert np.isfinite(carved).all()
        assert contains(carved, truth)
        means.append(float(iou(carved, truth).mean()))
    assert means[0] < means[2]


def test_unconstrained_and_contradicting_views() -> None:
    geometry = CArmGeometry(num_views=4, rows=64, columns=64)
    cameras = geometry.cameras()
    low, high = np.full(3, -150.0), np.full(3, 150.0)
    cube = np.array(np.meshgrid(*(np.linspace(-20, 20, 9),) * 3)).reshape(3, -1).T
    ball = cube[np.linalg.norm(cube, axis=1) <= 20.0] + np.array([30.0, -10.0, 5.0])
    boxes = silhouette_boxes(cameras, ball)
    carved = carve_box(cameras, boxes, low, high)
    assert contains(carved[None], world_box(ball)[None])
    # One view alone does not bound the depth: not carved.
    only_one = np.full_like(boxes, np.nan)
    only_one[0] = boxes[0]
    assert np.isnan(carve_box(cameras, only_one, low, high)).all()
    # Boxes whose pyramids do not meet: not carved.
    contradicting = boxes.copy()
    contradicting[2] = [1.0, 1.0, 4.0, 4.0]
    assert np.isnan(carve_box(cameras, contradicting, low, high)).all()
    # A box side on the detector border does not constrain: the organ may continue beyond the image.
    cut = boxes.copy()
    cut[:, 3] = 63.5  # every view: the organ reaches the bottom edge (inferior)
    carved_cut = carve_box(cameras, cut, low, high)
    assert carved_cut[2] - carved_cut[5] / 2 == pytest.approx(low[2])  # extends to the region's inferior end
