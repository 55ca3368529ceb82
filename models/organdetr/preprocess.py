"""Deterministic preprocessing shared by training and inference.

``image (any orientation, spacing, size) -> reorient to PreprocessConfig.orientation (exact axis permutation
and flips) -> crop to the body (optional) -> resample to PreprocessConfig.target_spacing_mm (box-filter
anti-aliasing where it shrinks, then trilinear, half-voxel aligned; an axis a little longer than whole windows a
little coarser) -> clip and scale HU``. The result has the scan's own physical extent; cutting it into network
windows is :mod:`organdetr.windows`' job. Legacy configs (no target spacing) resize to
``spatial_size`` instead.

Alongside the network input it returns the affine that maps a continuous ITK index of the ORIGINAL image to a
continuous voxel index of the network input (``index_to_network``). The backend inverts it to bring boxes back to
the original image exactly, with no resampling of boxes through world space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .config import PreprocessConfig
from .image_geometry import index_to_physical_matrix
from .windows import fit_to_windows

if TYPE_CHECKING:
    import SimpleITK as sitk

# A grid shrunk by at least this factor along an axis is box-filtered to its output size first.
ANTIALIAS_MIN_FACTOR = 1.25


@dataclass(frozen=True)
class NetworkGrid:
    """Where a scan's network grid lies: the reoriented voxels it covers and its shape. A label map is put on the
    grid of its image (:func:`preprocess_label`), which the body crop makes depend on the image's voxels."""

    crop: tuple[slice, slice, slice]  # of the reoriented voxels, numpy order (k, j, i)
    shape: tuple[int, int, int]  # network grid (i, j, k)


@dataclass
class PreprocessedVolume:
    """A network-ready volume and its geometric link to the original image."""

    image: torch.Tensor  # [C, D0, D1, D2] float32, axes = ITK index axes (i, j, k) after reorientation
    index_to_network: np.ndarray  # 4x4: original continuous index (i, j, k, 1) -> network continuous index
    grid: NetworkGrid | None = None  # set by preprocess_image; volumes rebuilt from a cache need none

    @property
    def network_shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape[1:])  # type: ignore[return-value]


def network_to_physical_matrix(image: sitk.Image, index_to_network: np.ndarray) -> np.ndarray:
    """4x4 affine from a continuous network index to physical LPS mm: the network grid's exact geometry (a scaled
    axis permutation of the image's axes, so also exact for oblique images)."""
    return index_to_physical_matrix(image) @ np.linalg.inv(index_to_network)


def _resize_matrix(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> np.ndarray:
    """Half-voxel aligned scaling (``align_corners=False``): voxel edges of both grids coincide."""
    scale = np.array(out_shape, dtype=np.float64) / np.array(in_shape, dtype=np.float64)
    matrix = np.diag([*scale, 1.0])
    matrix[:3, 3] = 0.5 * scale - 0.5
    return matrix


def _reorient(image: sitk.Image, orientation: str) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """Reorient by axis permutation and flips, without moving any voxel: returns a numpy VIEW of the voxels in
    the reoriented image's numpy order (k, j, i), its spacing (i, j, k) and the original->reoriented index affine.

    ``sitk.DICOMOrient`` decides the permutation and flips from the direction alone, so it is run on a 2x2x2 probe
    of the same geometry: a flip adds the axis size - 1 to the index, 1 on the probe, scaled to the image's size."""
    import SimpleITK as sitk  # where images are read: training from a pack (organdetr.training_pack) needs no ITK

    probe = sitk.Image([2, 2, 2], sitk.sitkUInt8)
    probe.SetSpacing(image.GetSpacing())
    probe.SetOrigin(image.GetOrigin())
    probe.SetDirection(image.GetDirection())
    oriented = sitk.DICOMOrient(probe, orientation)
    probe_map = np.linalg.inv(index_to_physical_matrix(oriented)) @ index_to_physical_matrix(probe)
    # A permutation with flips and integer offsets: remove floating-point noise from the round trip.
    probe_map = np.round(probe_map, 6)
    linear = probe_map[:3, :3]
    source = [int(np.argmax(np.abs(row))) for row in linear]  # original ITK axis of each reoriented axis
    size = np.asarray(image.GetSize(), dtype=np.float64)
    index_map = probe_map.copy()
    index_map[:3, 3] = probe_map[:3, 3] * (size[source] - 1.0)
    # numpy axis q is ITK axis 2 - q, in the reoriented and in the original image.
    view = sitk.GetArrayViewFromImage(image).transpose([2 - source[2 - q] for q in range(3)])
    view = view[tuple(slice(None, None, -1) if linear[2 - q, source[2 - q]] < 0 else slice(None) for q in range(3))]
    return view, oriented.GetSpacing(), index_map


def _float32_copy(view: np.ndarray) -> np.ndarray:
    """One pass over the full-size voxels: a C-ordered float32 copy (the cast, permutation and flips together)."""
    return np.array(view, dtype=np.float32, order="C")


def _to_ijk(tensor: torch.Tensor) -> torch.Tensor:
    """``[..., K, J, I]`` (numpy order) -> contiguous ``[..., I, J, K]`` (ITK index order)."""
    return tensor.transpose(-1, -3).contiguous()


def network_grid_shape(in_shape: tuple[int, ...], spacing: tuple[float, ...], config: PreprocessConfig) -> tuple:
    """Shape of the network grid for a reoriented image of ``in_shape`` voxels of ``spacing`` mm."""
    if config.target_spacing_mm is None:
        return tuple(config.spatial_size)
    extent = np.asarray(in_shape, dtype=np.float64) * np.asarray(spacing, dtype=np.float64)
    lengths = [max(1, round(float(v))) for v in extent / np.asarray(config.target_spacing_mm, dtype=np.float64)]
    return tuple(
        fit_to_windows(n, w, config.window_overlap, config.window_fit_zoom)
        for n, w in zip(lengths, config.spatial_size, strict=True)
    )


def _uncropped(shape: tuple[int, ...]) -> tuple[slice, slice, slice]:
    return (slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))


def _body_crop(view: np.ndarray, spacing: tuple[float, ...], config: PreprocessConfig) -> tuple[slice, slice, slice]:
    """The reoriented voxels (numpy order) within ``body_margin_mm`` of the bounding box of the voxels at or above
    ``body_hu_threshold``, searched on every ``step``-th voxel (about the network's spacing: cheap on a full-size
    CT); the whole scan when cropping is off or no voxel is that dense."""
    whole = _uncropped(view.shape)
    if not config.crops_to_body:
        return whole
    spacing_kji = spacing[::-1]
    steps = [max(1, int(t // s)) for t, s in zip(config.target_spacing_mm[::-1], spacing_kji, strict=True)]
    body = view[:: steps[0], :: steps[1], :: steps[2]] >= config.body_hu_threshold
    if not body.any():
        return whole
    crop = []
    for axis, (length, step, voxel_mm) in enumerate(zip(view.shape, steps, spacing_kji, strict=True)):
        hits = np.flatnonzero(body.any(axis=tuple(a for a in range(3) if a != axis)))
        # A sampled voxel stands for the step-1 unsampled ones on either side of it.
        margin = math.ceil(config.body_margin_mm / voxel_mm)
        crop.append(slice(max(0, (hits[0] - 1) * step - margin), min(length, (hits[-1] + 1) * step + margin)))
    return tuple(crop)  # type: ignore[return-value]


def _antialias(array: torch.Tensor, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> torch.Tensor:
    """Box-filter the axes of ``array [1, 1, *in_shape]`` that shrink by ANTIALIAS_MIN_FACTOR or more straight to
    their output size (adaptive average pooling: each output voxel averages the input voxels it covers), so that
    resampling does not alias noise and thin edges; the other axes are left to the trilinear step. Pooling bins follow
    voxel edges to within one input voxel. Fast and small: a 512x512x133 CT takes ~0.03 s (a Gaussian filter took
    seconds and GBs)."""
    factors = np.asarray(in_shape, dtype=np.float64) / np.asarray(out_shape, dtype=np.float64)
    pooled_axes = [axis for axis, factor in enumerate(factors) if factor >= ANTIALIAS_MIN_FACTOR]
    if not pooled_axes:
        return array
    # The axes that keep their size are channels of a pooling over the others only: the same averages, and for the
    # usual CT (slices kept, in-plane pooled) a view of the voxels that pools ~2x faster than a 3D pooling would.
    kept_axes = [axis for axis in range(3) if axis not in pooled_axes]
    volume = array[0, 0].permute(*kept_axes, *pooled_axes)
    channels = volume.shape[: len(kept_axes)]
    pool = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)[len(pooled_axes) - 1]
    pooled = pool(volume.reshape(1, -1, *volume.shape[len(kept_axes) :]), [out_shape[axis] for axis in pooled_axes])
    restored = pooled.reshape(*channels, *pooled.shape[2:]).permute(*np.argsort([*kept_axes, *pooled_axes]).tolist())
    return restored[None, None]


def preprocess_image(image: sitk.Image, config: PreprocessConfig) -> PreprocessedVolume:
    """CT image -> network input ``[C, D0, D1, D2]`` in ``[0, 1]`` plus the index affine (channel 0: the main HU
    window; then one channel per ``extra_hu_windows``)."""
    view, spacing, reorient_map = _reorient(image, config.orientation)
    crop = _body_crop(view, spacing, config)
    view = view[crop]
    in_shape = view.shape[::-1]  # (i, j, k)
    out_shape = network_grid_shape(in_shape, spacing, config)
    low, high = config.intensity_min, config.intensity_max
    # The full-size work runs in the voxels' own numpy order (k, j, i), so that no full-size array is transposed;
    # only the resampled grid is permuted to (i, j, k). Every step treats the axes independently.
    array = _float32_copy(view)
    # Clip before smoothing: a metal streak or the -3024 HU outside a reconstruction circle must not bleed.
    np.clip(array, low, high, out=array)
    clipped = torch.from_numpy(array)[None, None]
    if config.target_spacing_mm is not None:
        clipped = _antialias(clipped, array.shape, out_shape[::-1])
    resized = _to_ijk(F.interpolate(clipped, size=out_shape[::-1], mode="trilinear", align_corners=False)[0])
    windows = [(low, high), *config.extra_hu_windows]
    scaled = torch.cat([(resized.clamp(lo, hi) - lo) / (hi - lo) for lo, hi in windows])
    to_crop = np.eye(4)
    to_crop[:3, 3] = [-part.start for part in crop[::-1]]
    index_map = _resize_matrix(in_shape, out_shape) @ to_crop @ reorient_map
    return PreprocessedVolume(image=scaled, index_to_network=index_map, grid=NetworkGrid(crop, out_shape))


def preprocess_label(label: sitk.Image, config: PreprocessConfig, grid: NetworkGrid | None = None) -> torch.Tensor:
    """Integer label map -> ``[D0, D1, D2]`` long tensor on the network grid (nearest, half-voxel aligned): its
    image's ``grid`` (``PreprocessedVolume.grid``, required when the preprocessing crops to the body), else the
    label map's own uncropped grid."""
    view, spacing, _ = _reorient(label, config.orientation)
    if grid is None:
        if config.crops_to_body:
            raise ValueError("this preprocessing crops scans to the body: pass the image's grid")
        grid = NetworkGrid(_uncropped(view.shape), network_grid_shape(view.shape[::-1], spacing, config))
    resized = F.interpolate(
        torch.from_numpy(_float32_copy(view[grid.crop]))[None, None], size=grid.shape[::-1], mode="nearest-exact"
    )
    return _to_ijk(resized[0, 0].round().long())
