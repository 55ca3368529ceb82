"""Where an organ's label-map voxels fall: their world box and, per view, the box of their projected silhouette.

An organ is the union of its voxels' cubes. Its 3D box (world LPS axes) and every 2D silhouette box are the extremes
of the cubes' corners: a perspective projection maps each cube's convex hull to the convex hull of its corners'
images, so projecting the corners is exact (projecting a 3D box's corners instead would give a looser box, and voxel
centres a box half a voxel too small). Only corners on the organ's surface can be extreme, so only those are kept.

2D boxes are ``(u_min, v_min, u_max, v_max)`` in pixel coordinates (pixel centres at integers, see
:mod:`organdetr.xray.camera`); a box is clipped to the detector, and an organ that projects entirely off the
detector (or behind the source) has no box in that view (NaN).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .camera import Camera

NO_BOX = float("nan")


def surface_corners(mask: np.ndarray, index_to_world: np.ndarray) -> np.ndarray:
    """World coordinates ``[N, 3]`` of the voxel corners on the surface of a boolean ``mask`` ``[k, j, i]``
    (SimpleITK array order) of a grid with the affine ``index_to_world`` (continuous ITK index -> world)."""
    voxels = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    padded = F.pad(voxels, (1, 1, 1, 1, 1, 1))
    # Corner lattice (k+1, j+1, i+1): a corner touches the 2x2x2 voxels around it.
    touches_organ = F.max_pool3d(padded, kernel_size=2, stride=1)[0, 0] > 0
    inside_organ = -F.max_pool3d(-padded, kernel_size=2, stride=1)[0, 0] > 0
    kji = torch.nonzero(touches_organ & ~inside_organ).numpy().astype(np.float64)
    index = kji[:, ::-1] - 0.5  # corner (a, b, c) of the lattice is at continuous index (c, b, a) - 1/2
    return index @ index_to_world[:3, :3].T + index_to_world[:3, 3]


def world_box(corners: np.ndarray) -> np.ndarray:
    """Centre-size box ``[6]`` (world axes, mm) of an organ's surface corners; NaN for an empty organ."""
    if len(corners) == 0:
        return np.full(6, NO_BOX)
    low, high = corners.min(axis=0), corners.max(axis=0)
    return np.concatenate([(low + high) / 2, high - low])


def silhouette_box(camera: Camera, corners: np.ndarray) -> np.ndarray:
    """The unclipped 2D box ``[4]`` of an organ's projected corners; NaN when the organ is empty or any corner is not
    in front of the source (its projection is then not a bounded box)."""
    if len(corners) == 0:
        return np.full(4, NO_BOX)
    pixels, depth = camera.project(torch.from_numpy(corners))
    if bool((depth <= 0).any()):
        return np.full(4, NO_BOX)
    pixels = pixels.numpy()
    return np.concatenate([pixels.min(axis=0), pixels.max(axis=0)])


def clip_to_detector(box: np.ndarray, camera: Camera) -> np.ndarray:
    """A 2D box clipped to the detector's outer pixel edges; NaN when nothing of it is on the detector."""
    low_limit = np.array([-0.5, -0.5])
    high_limit = np.array([camera.columns - 0.5, camera.rows - 0.5])
    low, high = np.maximum(box[:2], low_limit), np.minimum(box[2:], high_limit)
    if not np.isfinite(box).all() or (high <= low).any():
        return np.full(4, NO_BOX)
    return np.concatenate([low, high])


def silhouette_boxes(cameras: list[Camera], corners: np.ndarray) -> np.ndarray:
    """Clipped silhouette boxes ``[views, 4]`` of one organ (NaN rows where a view does not see it)."""
    return np.stack([clip_to_detector(silhouette_box(camera, corners), camera) for camera in cameras])
