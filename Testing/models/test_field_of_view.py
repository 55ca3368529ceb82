"""Random field-of-view training windows on the real pt_201 case: true negatives, slivers, air padding."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from openkbp_dataset import CLASS_NAMES
from organdetr.config import FieldOfViewConfig, PreprocessConfig
from organdetr.dataset import CaseRecord, preprocess_case
from organdetr.field_of_view import HEAD_FOOT_AXIS, sample_training_window

WINDOW = (64, 64, 64)


@pytest.fixture(scope="module")
def case(head_neck_case):
    ct, label = head_neck_case
    record = CaseRecord(name="pt_201", image=ct, label=label, annotated=CLASS_NAMES)
    return preprocess_case(record, CLASS_NAMES, PreprocessConfig(target_spacing_mm=(8.0, 8.0, 5.0)))


def _samples(case, config: FieldOfViewConfig, count: int = 40):
    for seed in range(count):
        yield sample_training_window(
            case.image.float(), case.label_map, case.annotated, WINDOW, config, np.random.default_rng(seed)
        )


def test_case_grid_is_physical_and_windows_have_the_network_size(case):
    assert tuple(case.image.shape[1:]) != WINDOW  # the case keeps its own extent at the target spacing
    for sample in _samples(case, FieldOfViewConfig(), count=10):
        assert sample.image.shape == (1, *WINDOW) and sample.label_map.shape == WINDOW


def test_removed_organs_are_true_negatives_and_slivers_are_unknown(case):
    config = replace(FieldOfViewConfig(), cut_probability=1.0, min_cut_fraction=0.1, empty_probability=0.0)
    full_counts = torch.bincount(case.label_map.flatten().long(), minlength=8)[1:]
    seen_absent = seen_sliver = 0
    for sample in _samples(case, config):
        counts = torch.bincount(sample.label_map.flatten().long(), minlength=8)[1:]
        for k in range(7):
            if not bool(sample.annotated[k]):
                assert counts[k] == 0  # a sliver's voxels are cleared with its annotation
                seen_sliver += 1
            elif counts[k] == 0:
                seen_absent += 1  # annotated, not in the window: trained as absent
            else:
                assert counts[k] >= config.min_visible_fraction * full_counts[k]
    assert seen_absent > 0 and seen_sliver > 0


def test_organ_free_slabs_and_air_outside_the_field_of_view(case):
    config = replace(FieldOfViewConfig(), empty_probability=1.0, inplane_cut_probability=0.0)
    empty = list(_samples(case, config, count=10))
    assert all(int(s.label_map.max()) == 0 for s in empty)
    assert all(bool(s.annotated.all()) for s in empty)  # every organ is a known negative there
    # The slab is thinner than the window along the head-foot axis: the rest of the window is air (0).
    profile = empty[0].image[0].amax(dim=tuple(a for a in range(3) if a != HEAD_FOOT_AXIS))
    assert profile.min() == 0 and profile.max() > 0


def test_sampling_is_a_pure_function_of_the_generator(case):
    first = next(_samples(case, FieldOfViewConfig(), count=1))
    again = next(_samples(case, FieldOfViewConfig(), count=1))
    assert torch.equal(first.image, again.image) and torch.equal(first.label_map, again.label_map)


def test_landmark_cuts_end_at_an_organ_edge(case):
    from organdetr.field_of_view import MIN_EXTENT_VOXELS, _field_of_view

    config = replace(
        FieldOfViewConfig(),
        cut_probability=1.0,
        landmark_cut_fraction=1.0,
        landmark_margin_voxels=0,
        empty_probability=0.0,
        inplane_cut_probability=0.0,
    )
    length = case.label_map.shape[HEAD_FOOT_AXIS]
    edges = set()
    for value in range(1, 8):
        slices = (case.label_map == value).any(dim=(0, 1)).nonzero()[:, 0]
        edges |= {
            min(max(int(edge), MIN_EXTENT_VOXELS), length - MIN_EXTENT_VOXELS) for edge in (slices[0], slices[-1] + 1)
        }
    cuts = [_field_of_view(np.random.default_rng(seed), case.label_map, case.annotated, config) for seed in range(30)]
    for extent in cuts:
        lo, hi = extent[HEAD_FOOT_AXIS]
        assert (lo == 0 and hi in edges) or (hi == length and lo in edges)
        assert extent[0] == (0, case.label_map.shape[0])  # no in-plane cut asked for
    assert len({extent[HEAD_FOOT_AXIS] for extent in cuts}) > 5  # different organs and sides
