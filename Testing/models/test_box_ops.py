"""box_ops overlap measures against MONAI and against a pair computed by hand; boxes of a label map by hand."""

from __future__ import annotations

import pytest
import torch
from monai.data.box_utils import box_giou, box_iou, convert_box_mode
from organdetr.box_ops import (
    boxes_from_label_map,
    center_size_to_corners,
    corners_to_center_size,
    matched_giou,
    pairwise_giou,
    pairwise_iou,
)


def corners(boxes: torch.Tensor) -> torch.Tensor:
    return torch.cat([boxes[:, :3] - boxes[:, 3:] / 2, boxes[:, :3] + boxes[:, 3:] / 2], dim=1)


def test_overlaps_agree_with_monai_on_random_boxes(make_boxes) -> None:
    generator = torch.Generator().manual_seed(0)
    a, b = make_boxes(12, generator), make_boxes(9, generator)
    torch.testing.assert_close(pairwise_iou(a, b), box_iou(corners(a), corners(b)))
    torch.testing.assert_close(pairwise_giou(a, b), box_giou(corners(a), corners(b)))
    torch.testing.assert_close(matched_giou(a[:9], b), pairwise_giou(a[:9], b).diagonal())


def test_conversions_agree_with_monai(make_boxes) -> None:
    boxes = make_boxes(10, torch.Generator().manual_seed(1))
    as_corners = center_size_to_corners(boxes)
    torch.testing.assert_close(as_corners, convert_box_mode(boxes, src_mode="cccwhd", dst_mode="xyzxyz"))
    torch.testing.assert_close(corners_to_center_size(as_corners), boxes)


def test_hand_computed_pair() -> None:
    # Cubes [0, 2]^3 and [1, 3]^3: intersection 1, union 8 + 8 - 1 = 15, enclosing box [0, 3]^3 = 27.
    a = torch.tensor([[1.0, 1.0, 1.0, 2.0, 2.0, 2.0]])
    b = torch.tensor([[2.0, 2.0, 2.0, 2.0, 2.0, 2.0]])
    assert float(pairwise_iou(a, b)) == pytest.approx(1 / 15)
    assert float(pairwise_giou(a, b)) == pytest.approx(1 / 15 - 12 / 27)
    assert float(matched_giou(a, b)) == pytest.approx(1 / 15 - 12 / 27)


def test_matched_giou_has_gradients() -> None:
    a = torch.tensor([[0.5, 0.5, 0.5, 0.2, 0.2, 0.2]], requires_grad=True)
    b = torch.tensor([[0.55, 0.5, 0.5, 0.2, 0.2, 0.2]])
    matched_giou(a, b).sum().backward()
    assert a.grad is not None and float(a.grad[0, 0]) > 0  # moving a towards b increases the overlap


def test_boxes_of_a_label_map_by_hand() -> None:
    label_map = torch.zeros(10, 20, 40, dtype=torch.uint8)
    label_map[2:5, 4:8, 10:30] = 3  # organ 3: 240 voxels
    label_map[0, 0, 0:4] = 1  # organ 1: 4 voxels, below min_voxels
    label_map[9, 19, 39] = 9  # not an organ of a 7-class model
    classes, boxes = boxes_from_label_map(label_map, 7, min_voxels=5)
    assert classes.tolist() == [2]  # 0-based
    # Outer voxel edges: lo = first index, hi = last index + 1, normalised by the axis length.
    expected = torch.tensor([[2 / 10, 4 / 20, 10 / 40, 5 / 10, 8 / 20, 30 / 40]])
    torch.testing.assert_close(center_size_to_corners(boxes), expected)
    assert boxes_from_label_map(label_map.to(torch.int16) - 1, 7, min_voxels=5)[0].tolist() == [1]  # -1: background
    assert boxes_from_label_map(label_map, 7)[0].tolist() == [0, 2]
