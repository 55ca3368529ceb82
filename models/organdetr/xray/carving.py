"""Carving: the 3D box of an organ from its 2D boxes in several views, by intersecting the back-projected boxes.

Every 2D box back-projects to a pyramid with its apex at the source: four half-spaces (``u >= u_min`` is
``(K (R x + t))_u - u_min (R x + t)_z >= 0`` for points in front of the source, linear in ``x``). The organ lies in the
intersection of all views' pyramids and the region of interest, a convex polytope (the visual hull of the boxes), and
its world-axis box is found exactly by six linear programs (minimise and maximise each world coordinate). No voxel
grid, so no discretisation error.

A box side on the detector's border says only that the organ reaches the edge of the image (it may continue beyond),
so such sides do not constrain. Views without a box for the organ (not detected, or off the detector) do not
constrain either; an organ seen in fewer than ``min_views`` views, or whose pyramids do not meet, is not carved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog

from .camera import Camera

# A point must lie this far (mm) in front of a source to count as projected.
MIN_DEPTH_MM = 1.0


@dataclass(frozen=True)
class CarvingConfig:
    min_views: int = 2  # one view's pyramid is unbounded along its rays: the box would be the region's depth
    border_margin_px: float = 0.5  # a box side this close to the detector's outer edge is taken as cut off by it


def _half_spaces(camera: Camera, box: np.ndarray, config: CarvingConfig) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``a`` and offsets ``c`` of the constraints ``a . x + c >= 0`` of one view's pyramid (unit normals)."""
    projection = camera.intrinsics @ np.c_[camera.rotation, camera.translation]  # [3, 4]: (u w, v w, w)
    u_min, v_min, u_max, v_max = box
    edges_low = np.array([-0.5, -0.5]) + config.border_margin_px
    edges_high = np.array([camera.columns - 0.5, camera.rows - 0.5]) - config.border_margin_px
    rows = [projection[2] - np.array([0.0, 0.0, 0.0, MIN_DEPTH_MM])]  # depth >= MIN_DEPTH_MM: in front of the source
    for axis, low, high in ((0, u_min, u_max), (1, v_min, v_max)):
        if low > edges_low[axis]:
            rows.append(projection[axis] - low * projection[2])
        if high < edges_high[axis]:
            rows.append(high * projection[2] - projection[axis])
    constraints = np.stack(rows)
    constraints /= np.linalg.norm(constraints[:, :3], axis=1, keepdims=True)
    return constraints[:, :3], constraints[:, 3]


def carve_box(
    cameras: Sequence[Camera],
    boxes: np.ndarray,
    region_low: np.ndarray,
    region_high: np.ndarray,
    config: CarvingConfig = CarvingConfig(),
) -> np.ndarray:
    """Centre-size world box ``[6]`` of one organ from its 2D boxes ``[views, 4]`` (NaN rows: no box in that view),
    within the world box ``[region_low, region_high]``; all NaN when it cannot be carved."""
    seen = [i for i, box in enumerate(boxes) if np.isfinite(box).all()]
    if len(seen) < config.min_views:
        return np.full(6, np.nan)
    pieces = [_half_spaces(cameras[i], boxes[i], config) for i in seen]
    normals = np.concatenate([normal for normal, _ in pieces])
    offsets = np.concatenate([offset for _, offset in pieces])
    bounds = list(zip(region_low, region_high, strict=True))
    extremes = np.zeros((2, 3))
    for axis in range(3):
        for side, sign in ((0, 1.0), (1, -1.0)):
            objective = np.zeros(3)
            objective[axis] = sign
            # linprog: minimise objective . x subject to -normals . x <= offsets (i.e. normals . x + offsets >= 0).
            solution = linprog(objective, A_ub=-normals, b_ub=offsets, bounds=bounds, method="highs")
            if solution.status != 0:
                return np.full(6, np.nan)  # infeasible: the pyramids do not meet inside the region
            extremes[side, axis] = solution.x[axis]
    low, high = extremes
    return np.concatenate([(low + high) / 2, high - low])


def carve_boxes(
    cameras: Sequence[Camera],
    boxes: np.ndarray,
    region_low: np.ndarray,
    region_high: np.ndarray,
    config: CarvingConfig = CarvingConfig(),
) -> np.ndarray:
    """Centre-size world boxes ``[organs, 6]`` from 2D boxes ``[views, organs, 4]`` (NaN where not carved)."""
    return np.stack([carve_box(cameras, boxes[:, k], region_low, region_high, config) for k in range(boxes.shape[1])])


def field_of_view_cube(cameras: Sequence[Camera], isocenter: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The world-axis cube around ``isocenter`` whose side is the narrowest detector field at the isocentre's depth:
    the region every view can see, for carving when no CT grid is known."""
    sides = []
    for camera in cameras:
        depth = float(camera.rotation[2] @ isocenter + camera.translation[2])
        sides.append(depth * camera.columns / camera.intrinsics[0, 0])
        sides.append(depth * camera.rows / camera.intrinsics[1, 1])
    half = 0.5 * min(sides)
    return isocenter - half, isocenter + half
