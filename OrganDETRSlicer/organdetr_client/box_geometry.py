"""Oriented boxes in physical space and voxel index bounds of an image grid, with numpy only.

Voxel-edge conventions of ITK: voxel ``v`` spans the continuous index interval ``[v - 1/2, v + 1/2]``. A box whose
axes are the image axes is the box of voxel bounds exactly; oblique images give oblique boxes. The "image" is any
:class:`organdetr_client.image_geometry.ImageGrid` (a SimpleITK image, or the Slicer module's volume geometry).
LPS <-> RAS helpers for Slicer are here too, and :func:`box_corners`, the one definition of a box's corners (for
physical boxes, Slicer ROIs in world coordinates and boxes in index space alike).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from .image_geometry import ImageGrid, index_to_physical_matrix
from .schema import PhysicalBox, VoxelBounds

# Voxel v spans the continuous index interval [v - 1/2, v + 1/2] (ITK: voxel centres at integer indices).
HALF_VOXEL = 0.5
# A box edge within this many voxels of a voxel edge is taken as that edge (floating-point noise of the affines).
EDGE_TOLERANCE = 1e-6
# Signs flipping the first two axes: LPS <-> RAS.
_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])
# Corner k of a box: the low (-1) or high (+1) end along each box axis, the first axis varying slowest.
CORNER_SIGNS = np.array(list(itertools.product((-1.0, 1.0), repeat=3)))


def _signed_permutations() -> list[np.ndarray]:
    """The 24 proper (determinant +1) signed permutation matrices, identity first."""
    matrices = []
    for permutation in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            matrix = np.zeros((3, 3))
            matrix[list(permutation), range(3)] = signs
            if np.linalg.det(matrix) > 0:
                matrices.append(matrix)
    return matrices


_PROPER_SIGNED_PERMUTATIONS = _signed_permutations()


def canonical_axes(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder and flip the columns of an orthonormal ``direction`` into the proper rotation closest to identity.

    Returns ``(rotation, permutation)`` with ``rotation = direction @ permutation`` for a signed permutation matrix:
    column ``b`` of ``rotation`` is ``±`` column ``a`` of ``direction`` where ``permutation[a, b] != 0``. The set
    of box axes (and so the box) is unchanged; only how the axes are named is. Axis-aligned images give the
    identity; oblique ones the rotation nearest to identity.
    """
    direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    candidates = [direction @ p for p in _PROPER_SIGNED_PERMUTATIONS]
    if np.linalg.det(direction) < 0:  # a left-handed frame: flip one axis to make every candidate proper
        flip = np.diag([1.0, 1.0, -1.0])
        candidates = [direction @ flip @ p for p in _PROPER_SIGNED_PERMUTATIONS]
        permutations = [flip @ p for p in _PROPER_SIGNED_PERMUTATIONS]
    else:
        permutations = _PROPER_SIGNED_PERMUTATIONS
    best = int(np.argmax([np.trace(c) for c in candidates]))
    return candidates[best], permutations[best]


def index_box_to_physical(index_lo: np.ndarray, index_hi: np.ndarray, image: ImageGrid) -> PhysicalBox:
    """Box between continuous index EDGES ``index_lo`` and ``index_hi`` (per ITK axis) -> oriented LPS box.

    Centre = index-to-physical of the centre index; size = index extent x spacing; axes = the image axes,
    canonicalised by :func:`canonical_axes` (sizes permuted with them).
    """
    index_lo, index_hi = np.asarray(index_lo, dtype=np.float64), np.asarray(index_hi, dtype=np.float64)
    center = index_to_physical_matrix(image) @ np.append(0.5 * (index_lo + index_hi), 1.0)
    extent = (index_hi - index_lo) * np.asarray(image.GetSpacing(), dtype=np.float64)
    rotation, permutation = canonical_axes(np.array(image.GetDirection()))
    size = np.abs(permutation).T @ extent
    return PhysicalBox(
        center=tuple(float(v) for v in center[:3]),
        size=tuple(float(v) for v in size),
        orientation=[float(v) for v in rotation.ravel()],
    )


def voxel_bounds_to_physical(bounds: VoxelBounds, image: ImageGrid) -> PhysicalBox:
    """The physical box spanning the outer edges of inclusive voxel bounds."""
    return index_box_to_physical(
        np.array(bounds.min_ijk) - HALF_VOXEL, np.array(bounds.max_ijk_inclusive) + HALF_VOXEL, image
    )


def edges_to_voxel_bounds(index_lo: np.ndarray, index_hi: np.ndarray, shape: np.ndarray) -> VoxelBounds:
    """Continuous edges -> inclusive voxel bounds (nearest voxel edge), clipped to the image, never empty."""
    first = np.floor(index_lo + HALF_VOXEL + 0.5 - EDGE_TOLERANCE).astype(int)
    last = np.ceil(index_hi - HALF_VOXEL - 0.5 + EDGE_TOLERANCE).astype(int)
    first = np.clip(first, 0, shape - 1)
    last = np.clip(np.maximum(last, first), 0, shape - 1)
    return VoxelBounds(min_ijk=tuple(int(v) for v in first), max_ijk_inclusive=tuple(int(v) for v in last))


def box_corners(center: Sequence[float], size: Sequence[float], axes: np.ndarray | Sequence[float]) -> np.ndarray:
    """The 8 corners ``[8, 3]`` (in :data:`CORNER_SIGNS` order) of the box ``center ± size / 2`` along the columns of
    ``axes`` (3x3, or its 9 values row by row): a rotation, the identity for a box in index space, or any linear
    map (a Slicer ROI's object-to-world matrix may scale)."""
    half = 0.5 * np.asarray(size, dtype=np.float64)
    linear = np.asarray(axes, dtype=np.float64).reshape(3, 3)
    return np.asarray(center, dtype=np.float64) + (CORNER_SIGNS * half) @ linear.T


def physical_box_corners(box: PhysicalBox) -> np.ndarray:
    """The 8 corners ``[8, 3]`` of an oriented box, in the box's coordinate system (LPS mm)."""
    return box_corners(box.center, box.size, box.orientation)


def physical_box_to_voxel_bounds(box: PhysicalBox, image: ImageGrid) -> VoxelBounds:
    """Inclusive voxel bounds of the image voxels a physical box covers (for edited or hand-drawn boxes).

    For a box whose axes are the image axes this inverts :func:`voxel_bounds_to_physical`; otherwise it is the
    bounding index range of the box's corners.
    """
    physical_to_index = np.linalg.inv(index_to_physical_matrix(image))
    corners = physical_box_corners(box)
    index_corners = (physical_to_index @ np.c_[corners, np.ones(len(corners))].T).T[:, :3]
    return edges_to_voxel_bounds(index_corners.min(axis=0), index_corners.max(axis=0), np.asarray(image.GetSize()))


def lps_to_ras(points: np.ndarray) -> np.ndarray:
    """LPS points ``[..., 3]`` -> RAS (negate x and y); its own inverse."""
    return np.asarray(points, dtype=np.float64) * _LPS_TO_RAS


ras_to_lps = lps_to_ras


def orientation_lps_to_ras(orientation: np.ndarray) -> np.ndarray:
    """A 3x3 rotation whose columns are axes in LPS -> the same axes in RAS (negate the first two rows)."""
    return _LPS_TO_RAS[:, None] * np.asarray(orientation, dtype=np.float64).reshape(3, 3)


orientation_ras_to_lps = orientation_lps_to_ras
