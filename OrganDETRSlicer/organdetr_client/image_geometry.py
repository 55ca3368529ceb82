"""An image grid's index-to-physical affine, with numpy only (no torch), for every package that needs it.

Anything that answers ITK's geometry questions (``GetSize``, ``GetSpacing``, ``GetOrigin``, ``GetDirection``; a
``SimpleITK.Image`` or the Slicer module's volume geometry) is an :class:`ImageGrid`, so the backend's box geometry
runs unchanged in Slicer's Python, which has no torch in remote mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class ImageGrid(Protocol):
    """A 3D voxel grid in physical space, described as ITK describes it (LPS millimetres, ITK index order)."""

    # ITK's method names, so that a SimpleITK.Image is an ImageGrid as it is.
    def GetSize(self) -> Sequence[int]: ...

    def GetSpacing(self) -> Sequence[float]: ...

    def GetOrigin(self) -> Sequence[float]: ...

    def GetDirection(self) -> Sequence[float]: ...  # row-major 3x3, columns = index axes in LPS


def index_to_physical_matrix(image: ImageGrid) -> np.ndarray:
    """4x4 affine from a continuous ITK index to physical LPS millimetres."""
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return matrix
