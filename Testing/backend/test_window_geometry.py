"""Physical-space preprocessing and network windows keep boxes on the organs of the ORIGINAL image.

A volume resampled to a target spacing is cut into network windows (:mod:`organdetr.windows`): larger volumes into
several overlapping windows, smaller ones into one window padded with air. An organ's box found in a window must map
back, through ``Window.box_to_volume`` and the backend geometry, onto the organ's box in the original image within
half an original voxel, for every orientation and for windows smaller and larger than the volume.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from organdetr.box_ops import boxes_from_label_map
from organdetr.config import PreprocessConfig
from organdetr.preprocess import preprocess_image, preprocess_label
from organdetr.windows import Window, axis_starts, fit_to_windows, plan_windows, window_count
from organdetr_backend.geometry import network_box_to_image, physical_box_corners
from test_geometry import FLOAT_TOLERANCE_MM, _axis_interval, _ijk, _label_box_corners, cases  # noqa: F401

WINDOW_SIZES = {"smaller than the volume": 0.6, "larger than the volume": 1.5, "larger, scan cropped to the body": 1.5}


def _native_spacing_config(image: sitk.Image, window_factor: float) -> PreprocessConfig:
    """Target spacing = the image's own spacing along the LPS axes (every voxel sampled); a window of
    ``window_factor`` times the volume, rounded to a multiple of 8."""
    oriented = sitk.DICOMOrient(image, "LPS")
    window = tuple(max(8, 8 * round(n * window_factor / 8)) for n in oriented.GetSize())
    return PreprocessConfig(target_spacing_mm=tuple(oriented.GetSpacing()), spatial_size=window)


@pytest.mark.parametrize("case_name", ["RAS", "LPS", "LAS", "PLI", "oblique"])
@pytest.mark.parametrize("window_kind", list(WINDOW_SIZES))
def test_window_boxes_land_on_label_boxes(cases, case_name, window_kind):  # noqa: F811
    case = cases[case_name]
    cropped = window_kind == "larger, scan cropped to the body"
    if cropped:  # air around the scan, which the crop must take off again
        pad = ([6, 4, 3], [2, 5, 7])
        case = type(case)(sitk.ConstantPad(case.image, *pad, -1000.0), sitk.ConstantPad(case.label, *pad, 0))
    config = _native_spacing_config(case.image, WINDOW_SIZES[window_kind])
    if cropped:
        config = replace(config, body_hu_threshold=-300.0, body_margin_mm=0.0)
    volume = preprocess_image(case.image, config)
    network_labels = preprocess_label(case.label, config, volume.grid)
    oriented_size = np.array(sitk.DICOMOrient(case.image, "LPS").GetSize())
    assert network_labels.shape == volume.network_shape
    shape = np.array(volume.network_shape)
    assert np.all(shape < oriented_size) if cropped else np.all(shape == oriented_size)
    windows = plan_windows(volume.network_shape, config.spatial_size, config.window_overlap)
    assert (len(windows) > 1) == (window_kind == "smaller than the volume")
    label_ijk = _ijk(case.label)
    num_classes = int(label_ijk.max())
    spacing = np.array(case.image.GetSpacing())
    labels = network_labels.numpy()
    checked = set()
    for window in windows:
        in_volume, _ = window.overlap(volume.network_shape)
        window_labels = window.extract(network_labels[None])[0]
        classes, window_boxes = boxes_from_label_map(window_labels, num_classes)
        for class_index, window_box in zip(classes.tolist(), window_boxes, strict=True):
            organ = class_index + 1
            if (labels == organ).sum() != (labels[in_volume] == organ).sum():
                continue  # a part of the organ lies outside this window: its box here is a partial one
            assert not window.cuts_box(window_box, volume.network_shape) or window_kind == "smaller than the volume"
            box, bounds = network_box_to_image(
                window.box_to_volume(window_box, volume.network_shape).numpy(),
                volume.network_shape,
                volume.index_to_network,
                case.image,
            )
            true = np.nonzero(label_ijk == organ)
            true_lo, true_hi = np.array([t.min() for t in true]), np.array([t.max() for t in true])
            assert bounds.min_ijk == tuple(true_lo) and bounds.max_ijk_inclusive == tuple(true_hi), organ
            ours_lo, ours_hi = _axis_interval(physical_box_corners(box), case.image)
            ref_lo, ref_hi = _axis_interval(_label_box_corners(case.image, true_lo, true_hi), case.image)
            tolerance = 0.5 * spacing + FLOAT_TOLERANCE_MM
            assert np.all(np.abs(ours_lo - ref_lo) <= tolerance) and np.all(np.abs(ours_hi - ref_hi) <= tolerance)
            checked.add(organ)
    organs = set(np.unique(label_ijk).tolist()) - {0}
    if window_kind != "smaller than the volume":
        assert checked == organs
    else:
        assert len(checked) >= min(5, len(organs)), (checked, organs)  # the others span two windows


def test_windows_tile_the_volume_edge_to_edge():
    assert axis_starts(100, 128, 0.25) == [-14]  # one window, centred, padded with air
    assert axis_starts(128, 128, 0.25) == [0]
    starts = axis_starts(300, 128, 0.25)
    assert starts[0] == 0 and starts[-1] + 128 == 300
    assert all(0 < b - a <= 96 for a, b in itertools.pairwise(starts))  # overlap >= 25 %


def test_an_axis_a_little_longer_than_whole_windows_is_fitted_to_them():
    # 128-voxel windows, stride 96: one window covers 128, two 224, three 320.
    assert [fit_to_windows(n, 128, 0.25, 0.05) for n in (100, 128, 133, 134, 135, 224, 230, 235, 236)] == [
        100,
        128,
        128,
        128,
        135,
        224,
        224,
        224,
        236,
    ]
    assert all(
        window_count(fit_to_windows(n, 128, 0.25, 0.05), 128, 0.25) == len(axis_starts(n, 128, 0.25)) - 1
        for n in (133, 230)
    )
    assert fit_to_windows(133, 128, 0.25, 0.0) == 133  # off


def test_window_extract_pads_with_air_and_adds_back_in_place():
    image = torch.arange(5 * 6 * 7, dtype=torch.float32).reshape(1, 5, 6, 7) + 1.0
    window = Window(start=(-2, 1, 3), size=(8, 4, 6))
    cut = window.extract(image)
    assert cut.shape == (1, 8, 4, 6)
    assert torch.equal(cut[0, 2:7, :, :4], image[0, :, 1:5, 3:7])
    assert cut[0, :2].abs().sum() == 0 and cut[0, 7:].abs().sum() == 0 and cut[0, :, :, 4:].abs().sum() == 0
    total = torch.zeros_like(image)
    window.add_to_volume(total, cut)
    assert torch.equal(total[0, :, 1:5, 3:7], image[0, :, 1:5, 3:7]) and total[0, :, 0].abs().sum() == 0


def test_a_region_of_a_window_adds_where_the_whole_window_would():
    """Adding a region's values equals adding a window-sized tensor that holds them there and zeros elsewhere, also
    where the window hangs over the volume's edges; a region outside the volume adds nothing."""
    window = Window(start=(-2, 1, 3), size=(8, 4, 6))
    region = (slice(1, 5), slice(0, 3), slice(2, 6))  # from before the volume's start to beyond its end (axis 2)
    values = torch.rand(2, 4, 3, 4)
    dense = torch.zeros(2, 8, 4, 6)
    dense[(slice(None), *region)] = values
    expected, total = torch.zeros(2, 5, 6, 7), torch.zeros(2, 5, 6, 7)
    window.add_to_volume(expected, dense)
    window.add_region_to_volume(total, region, values)
    assert torch.equal(total, expected) and total.abs().sum() > 0
    window.add_region_to_volume(total, (slice(0, 2), slice(0, 4), slice(0, 6)), torch.ones(2, 2, 4, 6))
    assert torch.equal(total, expected)  # window rows 0-1 lie before the volume


def test_box_to_volume_and_cut_detection():
    window = Window(start=(10, 0, -4), size=(20, 20, 20))
    shape = (40, 20, 12)
    box = torch.tensor([0.5, 0.5, 0.5, 0.2, 0.4, 0.1])
    mapped = window.box_to_volume(box, shape)
    np.testing.assert_allclose(mapped.numpy(), [20 / 40, 10 / 20, 6 / 12, 4 / 40, 8 / 20, 2 / 12], rtol=1e-6)
    assert not window.cuts_box(box, shape)
    assert window.cuts_box(torch.tensor([0.05, 0.5, 0.5, 0.1, 0.2, 0.2]), shape)  # low edge at the inner border
    assert window.cuts_box(torch.tensor([0.95, 0.5, 0.5, 0.1, 0.2, 0.2]), shape)  # high edge, volume goes on
    assert not window.cuts_box(torch.tensor([0.5, 0.95, 0.5, 0.2, 0.1, 0.2]), shape)  # the volume's own edge
