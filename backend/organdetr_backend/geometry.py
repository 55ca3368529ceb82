"""From network boxes back to the ORIGINAL image: voxel index bounds and oriented physical boxes in LPS mm.

A network box is normalised ``(c0, c1, c2, s0, s1, s2)`` on the network grid (voxel-edge convention of
:mod:`organdetr.config`: voxel ``v`` of ``n`` spans ``[v / n, (v + 1) / n]``). The preprocessing affine
``index_to_network`` (original continuous ITK index -> network continuous index, voxel centres at integers) is
inverted to bring the box corners to the original index space, where the box is axis-aligned because the
preprocessing only permutes, flips and scales axes. Through the image's index-to-physical affine it becomes an
oriented box whose axes are the image axes: oblique images give oblique boxes, never axis-aligned approximations.

The box geometry itself (physical boxes, voxel bounds, LPS/RAS) is the torch-free client's
(:mod:`organdetr_client.box_geometry`), re-exported here for the backend's modules.
"""

from __future__ import annotations

import numpy as np
from organdetr_client.box_geometry import HALF_VOXEL, box_corners, edges_to_voxel_bounds
from organdetr_client.box_geometry import canonical_axes as canonical_axes
from organdetr_client.box_geometry import index_box_to_physical as index_box_to_physical
from organdetr_client.box_geometry import lps_to_ras as lps_to_ras
from organdetr_client.box_geometry import orientation_lps_to_ras as orientation_lps_to_ras
from organdetr_client.box_geometry import orientation_ras_to_lps as orientation_ras_to_lps
from organdetr_client.box_geometry import physical_box_corners as physical_box_corners
from organdetr_client.box_geometry import physical_box_to_voxel_bounds as physical_box_to_voxel_bounds
from organdetr_client.box_geometry import ras_to_lps as ras_to_lps
from organdetr_client.box_geometry import voxel_bounds_to_physical as voxel_bounds_to_physical
from organdetr_client.image_geometry import ImageGrid
from organdetr_client.schema import PhysicalBox, VoxelBounds


def network_box_to_index_edges(
    box: np.ndarray, network_shape: tuple[int, int, int], index_to_network: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised network box -> continuous index edges ``(lo, hi)`` in the original image's ITK index space."""
    box = np.asarray(box, dtype=np.float64)
    shape = np.asarray(network_shape, dtype=np.float64)
    # Normalised u -> network continuous index u * n - 1/2 (0 is the outer edge of voxel 0, at index -1/2).
    corners = box_corners(box[:3] * shape - HALF_VOXEL, box[3:] * shape, np.eye(3))
    network_to_index = np.linalg.inv(np.asarray(index_to_network, dtype=np.float64))
    index_corners = (network_to_index @ np.c_[corners, np.ones(len(corners))].T).T[:, :3]
    return index_corners.min(axis=0), index_corners.max(axis=0)


def network_box_to_image(
    box: np.ndarray, network_shape: tuple[int, int, int], index_to_network: np.ndarray, image: ImageGrid
) -> tuple[PhysicalBox, VoxelBounds]:
    """Map one normalised network box to the original image, clipped to the image.

    Returns the oriented physical box (LPS mm, axes = image axes) and the inclusive voxel index bounds in the
    image's ITK index space.
    """
    lo, hi = network_box_to_index_edges(box, network_shape, index_to_network)
    shape = np.asarray(image.GetSize())
    # A box that reaches past the scan is cut at the image's outer voxel edges (the organ is cut there too).
    lo = np.clip(lo, -HALF_VOXEL, shape - HALF_VOXEL)
    hi = np.clip(np.maximum(hi, lo), -HALF_VOXEL, shape - HALF_VOXEL)
    return index_box_to_physical(lo, hi, image), edges_to_voxel_bounds(lo, hi, shape)
