"""Deterministic preprocessing shared by training and inference.

``image (any orientation, spacing, size) -> reorient to PreprocessConfig.orientation (exact axis permutation
and flips) -> resize to PreprocessConfig.spatial_size (trilinear, half-voxel aligned) -> clip and scale HU``.

Alongside the network input it returns the affine that maps a continuous ITK index of the ORIGINAL image to a
continuous voxel index of the network input (``index_to_network``). The backend inverts it to bring boxes back to
the original image exactly, with no resampling of boxes through world space.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from .config import PreprocessConfig
from .image_geometry import index_to_physical_matrix


@dataclass
class PreprocessedVolume:
    """A network-ready volume and its geometric link to the original image."""

    image: torch.Tensor  # [1, D0, D1, D2] float32, axes = ITK index axes (i, j, k) after reorientation
    index_to_network: np.ndarray  # 4x4: original continuous index (i, j, k, 1) -> network continuous index

    @property
    def network_shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape[1:])  # type: ignore[return-value]


def _resize_matrix(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> np.ndarray:
    """Half-voxel aligned scaling (``align_corners=False``): voxel edges of both grids coincide."""
    scale = np.array(out_shape, dtype=np.float64) / np.array(in_shape, dtype=np.float64)
    matrix = np.diag([*scale, 1.0])
    matrix[:3, 3] = 0.5 * scale - 0.5
    return matrix


def _reorient(image: sitk.Image, orientation: str) -> tuple[sitk.Image, np.ndarray]:
    """Reorient by axis permutation and flips; returns the image and the original->reoriented index affine."""
    oriented = sitk.DICOMOrient(image, orientation)
    index_map = np.linalg.inv(index_to_physical_matrix(oriented)) @ index_to_physical_matrix(image)
    # A permutation with flips and integer offsets: remove floating-point noise from the round trip.
    return oriented, np.round(index_map, 6)


def _array_ijk(image: sitk.Image) -> np.ndarray:
    """Voxel array in ITK index order (i, j, k)."""
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def preprocess_image(image: sitk.Image, config: PreprocessConfig) -> PreprocessedVolume:
    """CT image -> network input ``[1, D0, D1, D2]`` in ``[0, 1]`` plus the index affine."""
    oriented, reorient_map = _reorient(image, config.orientation)
    array = torch.from_numpy(np.ascontiguousarray(_array_ijk(oriented), dtype=np.float32))
    resized = F.interpolate(array[None, None], size=tuple(config.spatial_size), mode="trilinear", align_corners=False)[
        0
    ]
    low, high = config.intensity_min, config.intensity_max
    scaled = (resized.clamp(low, high) - low) / (high - low)
    index_map = _resize_matrix(array.shape, tuple(config.spatial_size)) @ reorient_map
    return PreprocessedVolume(image=scaled, index_to_network=index_map)


def preprocess_label(label: sitk.Image, config: PreprocessConfig) -> torch.Tensor:
    """Integer label map -> ``[D0, D1, D2]`` long tensor on the network grid (nearest, half-voxel aligned)."""
    oriented, _ = _reorient(label, config.orientation)
    array = torch.from_numpy(np.ascontiguousarray(_array_ijk(oriented), dtype=np.float32))
    resized = F.interpolate(array[None, None], size=tuple(config.spatial_size), mode="nearest-exact")
    return resized[0, 0].round().long()
