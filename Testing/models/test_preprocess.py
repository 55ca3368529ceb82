"""Preprocessing contracts: physical space (target spacing, any extent) and the legacy fixed shape."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from organdetr.config import DetectorConfig, PreprocessConfig
from organdetr.dataset import network_spacing_mm
from organdetr.image_geometry import index_to_physical_matrix
from organdetr.preprocess import (
    _antialias,
    _reorient,
    network_grid_shape,
    network_to_physical_matrix,
    preprocess_image,
    preprocess_label,
)


def _image(size: tuple[int, int, int], spacing: tuple[float, float, float], values: np.ndarray | None = None):
    array = values if values is not None else np.zeros(size[::-1], dtype=np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # RAS: reoriented to LPS by flips
    return image


def test_physical_space_grid_follows_the_scan_extent():
    config = PreprocessConfig(target_spacing_mm=(4.0, 4.0, 2.5), spatial_size=(32, 32, 32))
    image = _image((100, 60, 30), (0.8, 2.0, 5.0))
    volume = preprocess_image(image, config)
    assert volume.network_shape == (20, 30, 60)  # 80 mm / 4, 120 mm / 4, 150 mm / 2.5: not the window
    np.testing.assert_allclose(network_spacing_mm(image, volume.index_to_network), (4.0, 4.0, 2.5))
    # The first and last voxel edges of both grids coincide (half-voxel aligned): index -0.5 -> network -0.5.
    corner = volume.index_to_network @ np.array([99.5, 59.5, -0.5, 1.0])  # RAS->LPS flips the first two axes
    np.testing.assert_allclose(corner[:3], [-0.5, -0.5, -0.5], atol=1e-9)


def test_legacy_contract_resizes_to_the_fixed_shape():
    config = PreprocessConfig(spatial_size=(32, 32, 16))
    for size, spacing in (((100, 60, 30), (0.8, 2.0, 5.0)), ((20, 20, 20), (3.0, 3.0, 3.0))):
        assert preprocess_image(_image(size, spacing), config).network_shape == (32, 32, 16)


def test_downsampling_is_anti_aliased_and_clips_before_resampling():
    # A 1-voxel checkerboard of +-300 HU around 40 HU: shrunk 4x it must average out, not alias.
    pattern = np.indices((40, 64, 64)).sum(axis=0) % 2
    values = (40 + 600 * pattern - 300).astype(np.int16)
    image = _image((64, 64, 40), (1.0, 1.0, 1.0), values)
    config = PreprocessConfig(target_spacing_mm=(4.0, 4.0, 4.0), intensity_min=-1000, intensity_max=1000)
    scaled = preprocess_image(image, config).image[0].numpy()
    hu = scaled * 2000 - 1000
    inner = hu[2:-2, 2:-2, 2:-2]
    assert abs(float(inner.mean()) - 40) < 5 and float(inner.std()) < 15
    # Metal (4000 HU) next to air is clipped to 1000 first: a mixed network voxel is at most halfway.
    metal = np.full((8, 8, 8), -1000, dtype=np.int16)
    metal[:, :, 4:] = 4000
    mixed = preprocess_image(
        _image((8, 8, 8), (1.0, 1.0, 1.0), metal), PreprocessConfig(target_spacing_mm=(8.0, 8.0, 8.0))
    )
    assert float(mixed.image.max()) == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("pooled_axes", [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)])
def test_antialiasing_pools_exactly_the_shrinking_axes(pooled_axes):
    """The axes that keep their size ride along as channels: the same averages as a 3D pooling of the shrinking axes
    to their output size and the others to their own."""
    in_shape = (17, 23, 29)
    out_shape = tuple(n // 3 if axis in pooled_axes else n - 1 for axis, n in enumerate(in_shape))
    volume = torch.randn(1, 1, *in_shape, generator=torch.Generator().manual_seed(0))
    expected = F.adaptive_avg_pool3d(volume, [out_shape[a] if a in pooled_axes else in_shape[a] for a in range(3)])
    torch.testing.assert_close(_antialias(volume, in_shape, out_shape), expected, rtol=0, atol=1e-6)


def test_extra_hu_windows_are_further_channels():
    values = np.array([-1000, -160, 40, 240, 1000], dtype=np.int16).repeat(8 * 8).reshape(5, 8, 8)
    image = _image((8, 8, 5), (1.0, 1.0, 1.0), values)
    config = PreprocessConfig(target_spacing_mm=(1.0, 1.0, 1.0), extra_hu_windows=((-160.0, 240.0),))
    volume = preprocess_image(image, config)
    assert volume.image.shape == (2, 8, 8, 5)
    np.testing.assert_allclose(volume.image[0, 0, 0].numpy(), [0.0, 0.42, 0.52, 0.62, 1.0], atol=1e-6)
    np.testing.assert_allclose(volume.image[1, 0, 0].numpy(), [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
    with pytest.raises(ValueError, match="2 input channels"):
        DetectorConfig(preprocess=config)


def test_body_crop_keeps_the_body_and_its_margin_and_the_labels_follow():
    # Air with a 0 HU "body" at numpy (k, j, i) [10:20, 30:50, 8:40] of a 1 mm grid; RAS, so i and j flip to LPS.
    values = np.full((40, 64, 48), -1000, dtype=np.int16)
    values[10:20, 30:50, 8:40] = 0
    labels = np.zeros(values.shape, dtype=np.uint8)
    labels[12:18, 35:45, 10:30] = 3
    image, label = _image((48, 64, 40), (1.0, 1.0, 1.0), values), _image((48, 64, 40), (1.0, 1.0, 1.0), labels)
    config = PreprocessConfig(
        target_spacing_mm=(2.0, 2.0, 1.0), spatial_size=(32, 32, 32), body_hu_threshold=-500.0, body_margin_mm=4.0
    )
    volume = preprocess_image(image, config)
    # LPS index (i, j, k) of the body: i flipped 47-39..47-8 = 8..39, j flipped 63-49..63-30 = 14..33, k 10..19;
    # plus 4 mm, at most one coarse step more (the search samples every 2nd voxel in i and j).
    lo_mm, hi_mm = np.array([8, 14, 10]) - 4, np.array([40, 34, 20]) + 4
    crop_lo = np.array([part.start for part in volume.grid.crop[::-1]])
    crop_hi = np.array([part.stop for part in volume.grid.crop[::-1]])
    search_step = np.array([2, 2, 1])
    assert np.all(crop_lo <= lo_mm) and np.all(crop_lo >= lo_mm - search_step)
    assert np.all(crop_hi >= hi_mm) and np.all(crop_hi <= hi_mm + search_step)
    assert volume.network_shape == tuple(round(float(n)) for n in (crop_hi - crop_lo) / [2.0, 2.0, 1.0])
    # The geometry still maps every network voxel onto the physical point of the original voxels it came from.
    centre = np.array([23.5, 23.5, 14.5, 1.0])  # an original continuous index (i, j, k) inside the body
    network = volume.index_to_network @ centre
    physical = network_to_physical_matrix(image, volume.index_to_network) @ network
    np.testing.assert_allclose(physical, index_to_physical_matrix(image) @ centre, atol=1e-9)
    # Labels must be put on the image's grid: required when cropping, and then aligned with the image.
    with pytest.raises(ValueError, match="grid"):
        preprocess_label(label, config)
    network_labels = preprocess_label(label, config, volume.grid)
    assert network_labels.shape == volume.network_shape
    assert float(volume.image[0][network_labels == 3].min()) == pytest.approx(0.5, abs=1e-6)  # 0 HU everywhere
    assert int((network_labels == 3).sum()) == 10 * 5 * 6  # 20x10x6 mm on 2x2x1 mm voxels


def test_body_crop_leaves_a_scan_without_body_whole():
    config = PreprocessConfig(target_spacing_mm=(2.0, 2.0, 2.0), body_hu_threshold=-500.0)
    assert preprocess_image(_image((16, 16, 8), (1.0, 1.0, 2.0)), config).network_shape == (8, 8, 8)
    air = _image((16, 16, 8), (1.0, 1.0, 2.0), np.full((8, 16, 16), -1000, dtype=np.int16))
    assert preprocess_image(air, config).network_shape == (8, 8, 8)
    with pytest.raises(ValueError, match="window_fit_zoom"):
        DetectorConfig(preprocess=PreprocessConfig(window_fit_zoom=0.3))


def _rotation(axis: int, degrees: float) -> np.ndarray:
    angle = np.deg2rad(degrees)
    i, j = [a for a in range(3) if a != axis]
    matrix = np.eye(3)
    matrix[[i, i, j, j], [i, j, i, j]] = [np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)]
    return matrix


def _directions() -> list[np.ndarray]:
    """Every axis permutation with every combination of flips, straight and tilted (oblique)."""
    tilt = _rotation(0, 20) @ _rotation(2, 35)
    directions = []
    for permutation in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            matrix = np.zeros((3, 3))
            matrix[range(3), permutation] = signs
            directions += [matrix, tilt @ matrix]
    return directions


def _oriented_image(values: np.ndarray, direction: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((0.8, 1.3, 2.1))
    image.SetOrigin((3.0, -4.0, 5.0))
    image.SetDirection(tuple(direction.ravel()))
    return image


def test_reorientation_moves_no_voxels_and_matches_dicom_orient():
    """Preprocessing reorients by a view of the voxels; voxels, spacing and index affine are sitk.DICOMOrient's on
    the full image, for every permutation and flip of the axes, straight or oblique."""
    values = np.random.default_rng(0).integers(-1000, 1000, size=(5, 6, 7)).astype(np.int16)
    for direction in _directions():
        image = _oriented_image(values, direction)
        view, spacing, index_map = _reorient(image, "LPS")
        oriented = sitk.DICOMOrient(image, "LPS")
        np.testing.assert_array_equal(view, sitk.GetArrayViewFromImage(oriented))
        assert spacing == oriented.GetSpacing()
        expected = np.linalg.inv(index_to_physical_matrix(oriented)) @ index_to_physical_matrix(image)
        np.testing.assert_array_equal(index_map, np.round(expected, 6))


def test_resampling_in_numpy_order_equals_resampling_in_index_order():
    """The full-size work runs in the voxels' numpy order (k, j, i); the result is that of clipping, pooling and
    resizing the reoriented (i, j, k) array, up to float rounding. Labels are exact."""
    rng = np.random.default_rng(1)
    values = rng.integers(-1500, 3000, size=(23, 29, 41)).astype(np.int16)
    labels = rng.integers(0, 5, size=values.shape).astype(np.uint8)
    config = PreprocessConfig(target_spacing_mm=(2.0, 3.0, 1.5), extra_hu_windows=((-160.0, 240.0),))
    for direction in _directions()[::7]:
        image, label = _oriented_image(values, direction), _oriented_image(labels, direction)
        volume = preprocess_image(image, config)
        oriented = sitk.DICOMOrient(image, config.orientation)
        ijk = torch.from_numpy(sitk.GetArrayFromImage(oriented).transpose(2, 1, 0).astype(np.float32))
        out_shape = network_grid_shape(ijk.shape, oriented.GetSpacing(), config)
        low, high = config.intensity_min, config.intensity_max
        pooled = _antialias(ijk.clamp(low, high)[None, None], tuple(ijk.shape), out_shape)
        resized = F.interpolate(pooled, size=out_shape, mode="trilinear", align_corners=False)[0]
        expected = torch.cat([(resized.clamp(lo, hi) - lo) / (hi - lo) for lo, hi in [(low, high), (-160.0, 240.0)]])
        assert volume.image.is_contiguous() and volume.image.shape == expected.shape
        torch.testing.assert_close(volume.image, expected, rtol=0, atol=1e-5)
        label_ijk = torch.from_numpy(
            sitk.GetArrayFromImage(sitk.DICOMOrient(label, config.orientation)).transpose(2, 1, 0).astype(np.float32)
        )
        expected_labels = F.interpolate(label_ijk[None, None], size=out_shape, mode="nearest-exact")[0, 0]
        assert torch.equal(preprocess_label(label, config), expected_labels.round().long())
