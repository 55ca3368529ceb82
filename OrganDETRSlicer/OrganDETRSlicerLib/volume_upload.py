"""A volume as the NRRD file the backend reads, written off the GUI thread.

:func:`snapshot` (GUI thread, no copy: it keeps a reference to the volume's voxel buffer) captures what the file
needs; :func:`write_nrrd` (any thread, no MRML or VTK calls) writes it. The file holds the volume's node coordinates
in LPS (a parent transform is not hardened: the boxes get the same transform).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from vtk.util.numpy_support import vtk_to_numpy

from organdetr_client.errors import UserInputError

from .volume_geometry import VolumeGeometry, volume_geometry

# numpy dtype -> NRRD "type" field
_NRRD_TYPES = {
    np.dtype(np.int8): "int8",
    np.dtype(np.uint8): "uint8",
    np.dtype(np.int16): "int16",
    np.dtype(np.uint16): "uint16",
    np.dtype(np.int32): "int32",
    np.dtype(np.uint32): "uint32",
    np.dtype(np.int64): "int64",
    np.dtype(np.uint64): "uint64",
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
}


@dataclass(frozen=True)
class VolumeSnapshot:
    name: str
    geometry: VolumeGeometry
    voxels: np.ndarray  # k, j, i order (i fastest), a view of the volume's buffer
    image_data: object  # the vtkImageData owning ``voxels``: keeps the buffer alive while the file is written


def snapshot(volume_node) -> VolumeSnapshot:
    """What :func:`write_nrrd` needs from a scalar volume node (cheap: no voxel copy)."""
    if volume_node is None or volume_node.GetImageData() is None:
        raise UserInputError("select an input volume with image data first")
    image_data = volume_node.GetImageData()
    scalars = image_data.GetPointData().GetScalars()
    if scalars is None or scalars.GetNumberOfComponents() != 1:
        raise UserInputError(f"volume '{volume_node.GetName()}' is not a single-component scalar volume")
    voxels = vtk_to_numpy(scalars)
    if voxels.dtype not in _NRRD_TYPES:
        raise UserInputError(f"volume '{volume_node.GetName()}' has voxels of type {voxels.dtype}, not a CT's")
    geometry = volume_geometry(volume_node)
    return VolumeSnapshot(volume_node.GetName(), geometry, voxels.reshape(geometry.shape[::-1]), image_data)


def _vector(values) -> str:
    return "(" + ",".join(repr(float(v)) for v in values) + ")"


def nrrd_header(volume: VolumeSnapshot) -> str:
    geometry = volume.geometry
    direction = np.array(geometry.direction, dtype=np.float64).reshape(3, 3)
    axes = [direction[:, axis] * geometry.spacing[axis] for axis in range(3)]  # columns = index axes in LPS
    return (
        "NRRD0004\n"
        f"type: {_NRRD_TYPES[volume.voxels.dtype]}\n"
        "dimension: 3\n"
        "space: left-posterior-superior\n"
        f"sizes: {' '.join(str(n) for n in geometry.shape)}\n"
        f"space directions: {' '.join(_vector(axis) for axis in axes)}\n"
        "kinds: domain domain domain\n"
        f"endian: {sys.byteorder}\n"
        "encoding: raw\n"
        f"space origin: {_vector(geometry.origin)}\n"
        "\n"
    )


def write_nrrd(volume: VolumeSnapshot, path: Path) -> Path:
    """Write the snapshot as an uncompressed NRRD (local upload: speed over size)."""
    with Path(path).open("wb") as handle:
        handle.write(nrrd_header(volume).encode("ascii"))
        handle.write(np.ascontiguousarray(volume.voxels).data)
    return Path(path)
