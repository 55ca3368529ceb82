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
