"""The link between MRML (RAS) and the backend's result schema (LPS, ITK index conventions).

Slicer node coordinates are RAS; the backend states everything in LPS. The change of basis (negate x and y) and the
index <-> physical geometry are the backend's own (organdetr_backend.geometry, organdetr.image_geometry): a
:class:`VolumeGeometry` is an ITK-style image grid, so the backend's box functions take it as they take an image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import vtk

from organdetr_client.box_geometry import orientation_ras_to_lps, ras_to_lps
from organdetr_client.image_geometry import index_to_physical_matrix

# Tolerances for "is this result about this volume": sub-micrometre in mm, and direction cosines to 1e-5.
SPACING_TOLERANCE_MM = 1e-4
ORIGIN_TOLERANCE_MM = 1e-3
DIRECTION_TOLERANCE = 1e-5


def numpy_from_vtk_matrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(row, col) for col in range(4)] for row in range(4)])


def vtk_from_numpy_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for col in range(4):
            matrix.SetElement(row, col, float(array[row, col]))
    return matrix


@dataclass(frozen=True)
class VolumeGeometry:
    """A volume's grid in the schema's terms: ITK index order, LPS physical space."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # row-major 3x3, columns = index axes in LPS

    # The ITK image-geometry interface (organdetr.image_geometry.ImageGrid), for the backend's geometry functions.
    def GetSize(self) -> tuple[int, int, int]:
        return self.shape

    def GetSpacing(self) -> tuple[float, float, float]:
        return self.spacing

    def GetOrigin(self) -> tuple[float, float, float]:
        return self.origin

    def GetDirection(self) -> tuple[float, ...]:
        return self.direction

    @classmethod
    def from_image_info(cls, image) -> VolumeGeometry:
        """The grid a result's ``image`` (schema ImageInfo) describes."""
        return cls(
            shape=tuple(int(n) for n in image.shape),  # type: ignore[arg-type]
            spacing=tuple(float(v) for v in image.spacing),  # type: ignore[arg-type]
            origin=tuple(float(v) for v in image.origin),  # type: ignore[arg-type]
            direction=tuple(float(v) for v in image.direction),
        )

    def same_voxels_as(self, other: VolumeGeometry) -> bool:
        """Whether both grids have the same voxels in space, possibly indexed in another axis order or direction.

        Slicer's reader, for one, flips the slice axis of left-handed images; the voxels are the same ones.
        """
        index_map = np.linalg.inv(index_to_physical_matrix(other)) @ index_to_physical_matrix(self)
        linear = index_map[:3, :3]
        if not np.allclose(linear, np.round(linear), atol=DIRECTION_TOLERANCE) or not np.allclose(
            np.abs(np.round(linear)).sum(axis=0), 1.0
        ):
            return False
        corners = np.array([[0, 0, 0], np.array(self.shape) - 1], dtype=np.float64)
        mapped = corners @ np.round(linear).T + index_map[:3, 3]
        origin_tolerance_voxels = ORIGIN_TOLERANCE_MM / min(min(self.spacing), min(other.spacing))
        return np.allclose(
            np.sort(mapped, axis=0), [[0, 0, 0], np.array(other.shape) - 1], atol=origin_tolerance_voxels
        )

    def mismatches(self, shape, spacing, origin, direction) -> list[str]:
        """Plain-words list of what differs from another grid (empty when they match within tolerance)."""
        problems = []
        if tuple(int(n) for n in shape) != self.shape:
            problems.append(f"size {tuple(shape)} voxels vs {self.shape}")
        if not np.allclose(spacing, self.spacing, rtol=0, atol=SPACING_TOLERANCE_MM):
            problems.append(f"spacing {_fmt(spacing)} mm vs {_fmt(self.spacing)} mm")
        if not np.allclose(origin, self.origin, rtol=0, atol=ORIGIN_TOLERANCE_MM):
            problems.append(f"origin {_fmt(origin)} mm vs {_fmt(self.origin)} mm")
        if not np.allclose(direction, self.direction, rtol=0, atol=DIRECTION_TOLERANCE):
            problems.append(f"orientation {_fmt(direction)} vs {_fmt(self.direction)}")
        return problems


def _fmt(values) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def volume_geometry(volume_node) -> VolumeGeometry:
    """The grid of a scalar volume node in its own node coordinates (a parent transform is not applied)."""
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    matrix = numpy_from_vtk_matrix(ijk_to_ras)
    spacing = np.array(volume_node.GetSpacing(), dtype=np.float64)
    direction_ras = matrix[:3, :3] / spacing
    image = volume_node.GetImageData()
    shape = tuple(int(n) for n in image.GetDimensions()) if image is not None else (0, 0, 0)
    return VolumeGeometry(
        shape=shape,  # type: ignore[arg-type]
        spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        origin=tuple(float(v) for v in ras_to_lps(matrix[:3, 3])),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in orientation_ras_to_lps(direction_ras).ravel()),
    )
