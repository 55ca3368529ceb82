"""Scenes: jittered acquisitions around the scan centre, boxes that match the geometry, a cache keyed by settings
and files, photometric augmentation; and the mean-box prior fitted from scenes."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from organdetr.dataset import CaseRecord
from organdetr.xray.camera import CArmGeometry
from organdetr.xray.prior import MeanBoxPrior
from organdetr.xray.scenes import (
    CaseData,
    PhotometricConfig,
    Scene,
    SceneCache,
    SceneConfig,
    augment_views,
    make_scene,
    read_case,
    scan_centre,
)
from organdetr.xray.silhouettes import silhouette_boxes
from xray_case import OPENKBP_CLASSES, HeadNeckCase

GEOMETRY_ONLY = SceneConfig(render=False)


@pytest.fixture(scope="module")
def case_data(pt_201: HeadNeckCase) -> CaseData:
    return read_case(CaseRecord("pt_201", pt_201.ct_path, pt_201.label_path, ()), OPENKBP_CLASSES)


def test_scenes_are_jittered_reproducible_and_consistent(pt_201: HeadNeckCase, case_data: CaseData) -> None:
    scenes = [make_scene(case_data, GEOMETRY_ONLY, index) for index in range(6)]
    again = make_scene(case_data, GEOMETRY_ONLY, 2)
    np.testing.assert_array_equal(again.boxes2d, scenes[2].boxes2d)
    assert again.geometry == scenes[2].geometry
    centre = scan_centre(pt_201.ct)
    shifts = np.array([scene.isocenter - centre for scene in scenes])
    assert (np.abs(shifts) <= 30.0).all() and np.abs(shifts).max() > 10.0
    starts = {round(scene.geometry.start_angle_deg, 3) for scene in scenes}
    assert len(starts) == 6
    for scene in scenes:
        assert 750 * 0.95 <= scene.geometry.source_to_isocenter_mm <= 750 * 1.05
        assert scene.geometry.source_to_detector_mm > scene.geometry.source_to_isocenter_mm
        assert scene.images is None
        # The scene's boxes are those of its own cameras.
        expected = np.stack([silhouette_boxes(scene.cameras, corners) for corners in pt_201.corners], axis=1)
        np.testing.assert_array_equal(scene.boxes2d, expected)
        assert scene.annotated.all()  # every organ is contoured in pt_201, whatever the list says
    fixed = replace(GEOMETRY_ONLY, isocenter_shift_mm=0.0, random_start_angle=False, distance_jitter=0.0)
    still = make_scene(case_data, fixed, 4)
    np.testing.assert_allclose(still.isocenter, centre)
    assert still.geometry.start_angle_deg == 0.0 and still.geometry.source_to_isocenter_mm == 750.0


def test_scene_cache_keys_on_settings_and_files(pt_201: HeadNeckCase, tmp_path: Path) -> None:
    case = tmp_path / "case"
    case.mkdir()
    for source in (pt_201.ct_path, pt_201.label_path):
        (case / source.name).write_bytes(source.read_bytes())
    record = CaseRecord("pt_201", case / pt_201.ct_path.name, case / pt_201.label_path.name, ())
    small = SceneConfig(c_arm=CArmGeometry(num_views=2, rows=24, columns=24, pixel_spacing_mm=25.0))
    cache = SceneCache(OPENKBP_CLASSES, small, tmp_path / "cache")
    built = cache.get(record, 1)
    assert built.images is not None and built.images.shape == (2, 24, 24) and float(built.images.max()) > 1.0
    files = sorted((tmp_path / "cache").iterdir())
    assert len(files) == 1
    loaded = cache.get(record, 1)
    torch.testing.assert_close(loaded.images, built.images)
    np.testing.assert_array_equal(loaded.boxes2d, built.boxes2d)
    np.testing.assert_array_equal(loaded.boxes3d, built.boxes3d)
    assert loaded.geometry == built.geometry
    assert len(list((tmp_path / "cache").iterdir())) == 1  # read back, not rebuilt
    # Other settings, another scene index, or a changed file: a new entry.
    SceneCache(OPENKBP_CLASSES, replace(small, isocenter_shift_mm=5.0), tmp_path / "cache").get(record, 1)
    cache.get(record, 2)
    stat = record.label.stat()
    os.utime(record.label, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    cache.get(record, 1)
    assert len(list((tmp_path / "cache").iterdir())) == 4


def test_photometric_augmentation_changes_values_not_shape() -> None:
    images = torch.rand(4, 16, 16) * 5
    first = augment_views(images, PhotometricConfig(), torch.Generator().manual_seed(1))
    second = augment_views(images, PhotometricConfig(), torch.Generator().manual_seed(1))
    other = augment_views(images, PhotometricConfig(), torch.Generator().manual_seed(2))
    assert first.shape == images.shape
    torch.testing.assert_close(first, second)
    assert float((first - images).abs().mean()) > 0.01 and float((first - other).abs().mean()) > 0.01
    still = PhotometricConfig(gain_range=(1.0, 1.0), offset_std=0.0, max_noise_std=0.0, max_blur_sigma_px=0.0)
    torch.testing.assert_close(augment_views(images, still), images)
    # Blur alone keeps a constant image constant (replicate padding: no dark rim).
    blur = PhotometricConfig(gain_range=(1.0, 1.0), offset_std=0.0, max_noise_std=0.0, max_blur_sigma_px=2.0)
    flat = torch.full((3, 16, 16), 2.0)
    torch.testing.assert_close(augment_views(flat, blur, torch.Generator().manual_seed(0)), flat)


def synthetic_scene(isocenter: tuple[float, float, float], boxes3d: np.ndarray) -> Scene:
    geometry = CArmGeometry(num_views=1, isocenter=isocenter)
    return Scene("x", geometry, None, np.full((1, len(boxes3d), 4), np.nan), boxes3d, np.isfinite(boxes3d[:, 0]))


def test_mean_box_prior_averages_boxes_relative_to_the_isocentre() -> None:
    scenes = [
        synthetic_scene((0.0, 0.0, 0.0), np.array([[10.0, 0.0, 0.0, 20.0, 20.0, 30.0], [np.nan] * 6])),
        synthetic_scene((5.0, 5.0, 5.0), np.array([[25.0, 5.0, 5.0, 40.0, 20.0, 10.0], [np.nan] * 6])),
    ]
    prior = MeanBoxPrior.fit(("A", "B"), scenes)
    np.testing.assert_allclose(prior.offsets[0], [15.0, 0.0, 0.0])
    np.testing.assert_allclose(prior.sizes[0], [30.0, 20.0, 20.0])
    assert prior.counts.tolist() == [2, 0]
    predicted = prior.predict(np.array([100.0, 0.0, -50.0]))
    np.testing.assert_allclose(predicted[0], [115.0, 0.0, -50.0, 30.0, 20.0, 20.0])
    assert np.isnan(predicted[1]).all()


@pytest.mark.parametrize("shift", [0.0, 30.0])
def test_prior_on_the_bundled_case_is_near_the_organs(case_data: CaseData, shift: float) -> None:
    """Fitted on scenes of pt_201 itself, the prior's centres are within the shift's reach of the truth."""
    config = replace(GEOMETRY_ONLY, isocenter_shift_mm=shift)
    scenes = [make_scene(case_data, config, i) for i in range(4)]
    prior = MeanBoxPrior.fit(OPENKBP_CLASSES, scenes)
    for scene in scenes:
        error = np.linalg.norm(prior.predict(scene.isocenter)[:, :3] - scene.boxes3d[:, :3], axis=1)
        assert error.max() <= np.sqrt(3) * 2 * shift + 1e-6
