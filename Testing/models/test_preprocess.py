"""Preprocessing contracts: physical space (target spacing, any extent) and the legacy fixed shape."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from organdetr.config import DetectorConfig, PreprocessConfig
from organdetr.dataset import network_spacing_mm
from organdetr.preprocess import preprocess_image


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
