"""One "same voxels?" check with one tolerance in millimetres (organdetr_client.same_grid), whatever the indexing."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest
import SimpleITK as sitk
from organdetr_client.same_grid import SAME_GRID_TOLERANCE_MM, grid_differences


@dataclass(frozen=True)
class Grid:
    size: tuple[int, int, int] = (512, 512, 120)
    spacing: tuple[float, float, float] = (0.98, 0.98, 2.5)
    origin: tuple[float, float, float] = (-250.0, -260.0, -300.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def GetSize(self):
        return self.size

    def GetSpacing(self):
        return self.spacing

    def GetOrigin(self):
        return self.origin

    def GetDirection(self):
        return self.direction


def _flipped(grid: Grid, axis: int) -> Grid:
    """The same voxels indexed the other way along ``axis`` (as Slicer reads a left-handed file)."""
    direction = np.array(grid.direction).reshape(3, 3)
    last = np.array(grid.origin) + direction[:, axis] * grid.spacing[axis] * (grid.size[axis] - 1)
    direction[:, axis] *= -1
    return replace(grid, origin=tuple(last), direction=tuple(direction.ravel()))


def _permuted(grid: Grid, order: tuple[int, int, int]) -> Grid:
    """The same voxels with the index axes in another order."""
    direction = np.array(grid.direction).reshape(3, 3)[:, order]
    return replace(
        grid,
        size=tuple(grid.size[a] for a in order),
        spacing=tuple(grid.spacing[a] for a in order),
        direction=tuple(direction.ravel()),
    )


def test_the_same_voxels_in_any_indexing_are_the_same_grid() -> None:
    grid = Grid()
    assert grid_differences(grid, grid) == []
    assert grid_differences(grid, _flipped(grid, 2)) == []
    assert grid_differences(_flipped(grid, 0), _permuted(grid, (2, 0, 1))) == []
    # Headers stored in float32 (NIfTI) round the geometry far below the tolerance.
    rounded = Grid(
        spacing=tuple(float(np.float32(v)) for v in grid.spacing),
        origin=tuple(float(np.float32(v)) for v in grid.origin),
    )
    assert grid_differences(grid, rounded) == []


def test_differences_are_named_in_plain_words() -> None:
    grid = Grid()
    assert grid_differences(grid, replace(grid, origin=(-240.0, -260.0, -300.0))) == [
        "origin (-240, -260, -300) mm vs (-250, -260, -300) mm"
    ]
    assert grid_differences(grid, replace(grid, size=(512, 512, 121))) == [
        "size (512, 512, 121) voxels vs (512, 512, 120) voxels"
    ]
    rotation = np.array(sitk.Euler3DTransform((0, 0, 0), 0.0, 0.0, np.deg2rad(10.0)).GetMatrix())
    (words,) = grid_differences(grid, replace(grid, direction=tuple(rotation)))
    assert words.startswith("orientation (0.9848, -0.1736, 0")


@pytest.mark.parametrize("factor", [0.5, 2.0])
def test_one_tolerance_in_millimetres_of_voxel_position(factor) -> None:
    """A shift or a spacing drift counts by how far it moves voxels, not by how it looks in the header."""
    grid = Grid()
    shift = factor * SAME_GRID_TOLERANCE_MM
    moved = replace(grid, origin=(grid.origin[0] + shift, *grid.origin[1:]))
    drift = shift / (grid.size[2] - 1)  # the last slice moves by `shift`
    stretched = replace(grid, spacing=(*grid.spacing[:2], grid.spacing[2] + drift))
    for other in (moved, stretched):
        differences = grid_differences(grid, other)
        if factor < 1:
            assert differences == []
        else:  # invisible in the printed header, so the distance is given
            assert differences == [f"voxel centres up to {shift:.3g} mm apart"]
