"""Whether two image grids hold the same voxels: one definition with one tolerance, for every "is this the same
image?" check (a result against the volume it is shown on, a label map against its CT).

Two grids are the same when their sizes agree and every voxel centre of one lies within
:data:`SAME_GRID_TOLERANCE_MM` of the corresponding voxel centre of the other, whichever axis order or direction each
indexes the voxels in (Slicer's reader, for one, flips the slice axis of left-handed images). The tolerance is in
millimetres of position, so spacing, origin and orientation differences count by how far they move voxels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .box_geometry import box_corners
from .image_geometry import ImageGrid, index_to_physical_matrix

# Far below any scanner's resolution, far above the float32 rounding of image headers (~1e-5 mm at 500 mm).
SAME_GRID_TOLERANCE_MM = 1e-3


def _largest_voxel_distance(grid: ImageGrid, other: ImageGrid) -> float | None:
    """Largest distance (mm) between a voxel centre of ``grid`` and the corresponding one of ``other``; ``None`` when
    the index axes do not correspond one to one (a rotation, another spacing scale, another size)."""
    grid_to_physical, other_to_physical = index_to_physical_matrix(grid), index_to_physical_matrix(other)
    index_map = np.linalg.inv(other_to_physical) @ grid_to_physical  # grid index -> other's continuous index
    axes = np.round(index_map[:3, :3])
    if not (np.all(np.abs(axes).sum(axis=0) == 1) and np.all(np.abs(axes).sum(axis=1) == 1)):
        return None
    shape = np.asarray(grid.GetSize(), dtype=np.float64)
    if not np.array_equal(np.abs(axes) @ shape, np.asarray(other.GetSize(), dtype=np.float64)):
        return None
    # Both index-to-physical maps are affine, so the largest distance is at a corner voxel.
    corners = np.c_[box_corners(0.5 * (shape - 1), shape - 1, np.eye(3)), np.ones(8)]
    matched = np.c_[corners[:, :3] @ axes.T + np.round(index_map[:3, 3]), np.ones(8)]
    positions, other_positions = corners @ grid_to_physical.T, matched @ other_to_physical.T
    return float(np.linalg.norm(positions[:, :3] - other_positions[:, :3], axis=1).max())


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def grid_differences(grid: ImageGrid, other: ImageGrid) -> list[str]:
    """Plain words for how ``other``'s voxels differ from ``grid``'s; empty when they are the same voxels."""
    distance = _largest_voxel_distance(grid, other)
    if distance is not None and distance <= SAME_GRID_TOLERANCE_MM:
        return []
    header = (
        ("size", " voxels", grid.GetSize(), other.GetSize()),
        ("spacing", " mm", grid.GetSpacing(), other.GetSpacing()),
        ("origin", " mm", grid.GetOrigin(), other.GetOrigin()),
        ("orientation", "", grid.GetDirection(), other.GetDirection()),
    )
    visible = [
        f"{what} {_fmt(theirs)}{unit} vs {_fmt(ours)}{unit}"
        for what, unit, ours, theirs in header
        if _fmt(ours) != _fmt(theirs)
    ]
    # Headers that print alike have corresponding axes, so then the distance is known.
    return visible or [f"voxel centres up to {distance:.3g} mm apart"]
