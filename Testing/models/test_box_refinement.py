"""Query boxes refined by segmented components: the overlapping component wins, no support keeps the query."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from organdetr.box_ops import corners_to_center_size
from organdetr.box_refinement import component_boxes, fit_corner_mix, refine_boxes
from organdetr.config import BoxRefinementConfig
from organdetr.postprocess import DecodedOrgan

NAMES = ("Alpha", "Beta", "Gamma")


def _box(lo, hi, shape=(20, 20, 20)) -> torch.Tensor:
    size = torch.tensor(shape, dtype=torch.float32)
    return corners_to_center_size(torch.cat([torch.tensor(lo) / size, torch.tensor(hi) / size])[None].float())[0]


@pytest.fixture
def label_map() -> torch.Tensor:
    labels = torch.zeros(20, 20, 20, dtype=torch.long)
    labels[2:6, 3:8, 4:9] = 1  # organ 1, the component near its query
    labels[14:18, 14:18, 14:18] = 1  # organ 1 again, a false component far away
    labels[10:11, 10:11, 10:12] = 2  # organ 2: a 2-voxel speck, below min_voxels
    return labels


def test_component_boxes_are_voxel_edge_boxes(label_map):
    boxes = component_boxes(label_map.numpy(), 1, min_voxels=5)
    expected = torch.stack([_box([2, 3, 4], [6, 8, 9]), _box([14, 14, 14], [18, 18, 18])])
    torch.testing.assert_close(boxes, expected)
    assert len(component_boxes(label_map.numpy(), 2, min_voxels=5)) == 0


def test_refinement_takes_the_overlapping_component_or_keeps_the_query(label_map):
    near = DecodedOrgan(class_index=0, score=0.9, box=_box([1, 3, 4], [7, 9, 9]), presence=0.9)
    speck = DecodedOrgan(class_index=1, score=0.8, box=_box([9, 9, 9], [12, 12, 13]), presence=0.8)
    nowhere = DecodedOrgan(class_index=2, score=0.7, box=_box([0, 0, 0], [3, 3, 3]), presence=0.7)
    refined = refine_boxes([near, speck, nowhere], label_map, BoxRefinementConfig(), NAMES)
    torch.testing.assert_close(refined[0].box, _box([2, 3, 4], [6, 8, 9]))
    assert [o.box_source for o in refined] == ["segmentation", "query", "query"]
    assert torch.equal(refined[1].box, speck.box) and torch.equal(refined[2].box, nowhere.box)
    assert refined[0].presence == near.presence and refined[0].score == near.score


def test_a_component_that_barely_overlaps_is_not_trusted(label_map):
    far = DecodedOrgan(class_index=0, score=0.9, box=_box([5, 7, 8], [12, 12, 12]), presence=0.9)
    (kept,) = refine_boxes([far], label_map, BoxRefinementConfig(min_iou=0.5), NAMES)
    assert kept.box_source == "query"


def test_average_rule_meets_the_query_halfway(label_map):
    near = DecodedOrgan(class_index=0, score=0.9, box=_box([1, 3, 4], [7, 9, 9]), presence=0.9)
    (averaged,) = refine_boxes([near], label_map, BoxRefinementConfig(box_rule="average"), NAMES)
    torch.testing.assert_close(averaged.box, _box([1.5, 3, 4], [6.5, 8.5, 9]))
    assert averaged.box_source == "segmentation"
    (kept,) = refine_boxes([near], label_map, BoxRefinementConfig(box_rule="keep"), NAMES)
    assert torch.equal(kept.box, near.box) and kept.box_source == "query"


def test_score_by_agreement_is_the_overlap_of_query_and_component(label_map):
    # Query [1,7)x[3,9)x[4,9) = 180 voxels, component [2,6)x[3,8)x[4,9) = 100 inside it: IoU 100 / 180.
    near = DecodedOrgan(class_index=0, score=0.9, box=_box([1, 3, 4], [7, 9, 9]), presence=0.9)
    nowhere = DecodedOrgan(class_index=2, score=0.7, box=_box([0, 0, 0], [3, 3, 3]), presence=0.7)
    config = BoxRefinementConfig(box_rule="keep", score_by_agreement=True)
    scored = refine_boxes([near, nowhere], label_map, config, NAMES)
    assert scored[0].score == pytest.approx(0.9 * 100 / 180, rel=1e-5)
    assert scored[1].score == 0.0  # the voxels do not confirm the box at all
    assert [o.presence for o in scored] == [0.9, 0.7]  # presence is the presence rule's business


def test_weighted_rule_mixes_each_corner_and_removes_the_bias(label_map):
    # Query [1,7)x[3,9)x[4,9), component [2,6)x[3,8)x[4,9) (see the fixture).
    near = DecodedOrgan(class_index=0, score=0.9, box=_box([1, 3, 4], [7, 9, 9]), presence=0.9)
    other = DecodedOrgan(class_index=1, score=0.8, box=_box([9, 9, 9], [12, 12, 13]), presence=0.8)
    config = BoxRefinementConfig(
        box_rule="weighted",
        component_weights={"Alpha": (1.0, 0.0, 0.5, 0.0, 1.0, 0.5)},
        corner_bias_voxels={"Alpha": (0.5, 0.0, 0.0, 0.0, 0.0, -1.0)},
    )
    mixed, unlisted = refine_boxes([near, other], label_map, config, NAMES)
    torch.testing.assert_close(mixed.box, _box([2 - 0.5, 3, 4], [7, 8, 9 + 1.0]))
    assert mixed.box_source == "segmentation"
    assert unlisted.box_source == "query" and torch.equal(unlisted.box, other.box)  # no weights: the query stays


def test_corner_mix_trusts_the_estimate_with_the_smaller_error():
    generator = np.random.default_rng(0)
    truth = generator.uniform(0, 50, size=(400, 6))
    query = truth + generator.normal(0, 1.0, size=truth.shape) + np.array([0, 0, 0, 0, 0, 3.0])  # biased hi2
    component = truth + generator.normal(0, 1.0, size=truth.shape) * np.array([0.01, 1, 1, 1, 1, 1e3])
    weights, bias = fit_corner_mix(query, component, truth)
    assert weights[0] > 0.99  # the component is exact there
    assert weights[5] < 0.01 and bias[5] == pytest.approx(3.0, abs=0.2)  # the component is noise: the query, unbiased
    assert np.all(np.abs(weights[1:5] - 0.5) < 0.1)  # equal noise: halfway
