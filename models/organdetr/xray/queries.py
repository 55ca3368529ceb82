"""MV2D's dynamic 3D object queries: from a 2D detection and the camera geometry to a 3D reference point, its sine
code, and the views whose features the query may attend to ("relevant feature selection").

* A detection in view ``v`` at pixel ``c`` lies on the ray from ``v``'s source through ``c``; a predicted depth along
  the principal ray fixes the point: ``p = unproject_v(c, depth)``. The depth is predicted as an offset from the
  isocentre's depth, where organs are.
* Points are normalised into the isocentre frame (:class:`IsocentreFrame`, the cube the views see) before encoding,
  so codes do not depend on where the scanner put the patient.
* A query may attend to the feature cells of every view that lie within the projection of a ball around its
  reference point (radius: the detection's half size at its depth, plus a margin); its own detection's cell is
  always allowed, so no query is left without keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .camera import CameraStack

# Highest frequency of the point code, in periods over the isocentre frame (a 400 mm frame: ~6 mm resolution).
MAX_PERIODS = 64.0


@dataclass(frozen=True)
class IsocentreFrame:
    """The cube ``isocenter +- half_extent_mm`` (world axes) that boxes and reference points are normalised to."""

    isocenter: Tensor  # [3] world mm
    half_extent_mm: float

    @property
    def origin(self) -> Tensor:
        return self.isocenter - self.half_extent_mm

    def normalise_points(self, points: Tensor) -> Tensor:
        return (points - self.origin) / (2 * self.half_extent_mm)

    def normalise_boxes(self, boxes: Tensor) -> Tensor:
        """Centre-size world boxes ``[..., 6]`` -> the frame's unit cube."""
        return torch.cat([self.normalise_points(boxes[..., :3]), boxes[..., 3:] / (2 * self.half_extent_mm)], dim=-1)

    def world_boxes(self, boxes: Tensor) -> Tensor:
        """The inverse of :meth:`normalise_boxes`."""
        scale = 2 * self.half_extent_mm
        return torch.cat([boxes[..., :3] * scale + self.origin, boxes[..., 3:] * scale], dim=-1)


def sine_encode_points(points: Tensor, channels: int) -> Tensor:
    """Sine/cosine code ``[..., channels]`` of normalised 3D points ``[..., 3]`` (geometric frequencies from one
    period over the frame to :data:`MAX_PERIODS`; channels beyond a multiple of 6 are zero)."""
    per_axis = (channels // 3) // 2
    if per_axis == 0:
        raise ValueError(f"a 3D sine code needs at least 6 channels, got {channels}")
    exponents = torch.arange(per_axis, dtype=points.dtype, device=points.device) / max(per_axis - 1, 1)
    frequencies = 2.0 * math.pi * MAX_PERIODS**exponents
    angles = points[..., :, None] * frequencies  # [..., 3, F]
    code = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)
    return torch.nn.functional.pad(code, (0, channels - code.shape[-1]))


def isocentre_depths(cameras: CameraStack, isocenter: Tensor) -> Tensor:
    """Depth ``[V]`` of the isocentre in every view."""
    _, depth = cameras.project(isocenter.expand(cameras.rotation.shape[0], 3))
    return depth


def reference_points(cameras: CameraStack, centres: Tensor, depths: Tensor) -> Tensor:
    """3D reference points ``[K, V, 3]`` of detections at pixel ``centres`` ``[K, V, 2]`` (detection of organ ``k``
    in view ``v``) and ``depths`` ``[K, V]`` along each view's principal ray."""
    return cameras.unproject(centres, depths)


def token_pixels(rows: int, columns: int, stride: int, device: torch.device) -> Tensor:
    """Pixel ``(u, v)`` ``[h * w, 2]`` each feature cell stands for (cell ``i`` is centred on pixel ``stride i``)."""
    height, width = math.ceil(rows / stride), math.ceil(columns / stride)
    v, u = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return torch.stack([u, v], dim=-1).reshape(-1, 2).float() * stride


@torch.no_grad()
def relevant_view_mask(
    cameras: CameraStack,
    points: Tensor,
    radius_mm: Tensor,
    own_view: Tensor,
    own_cell: Tensor,
    cells: Tensor,
    stride: int,
) -> Tensor:
    """Which feature cells each query may attend to: ``[Q, V * h * w]`` bool, ``True`` = allowed.

    ``points`` ``[Q, 3]`` reference points, ``radius_mm`` ``[Q]`` their extent, ``own_view`` / ``own_cell`` ``[Q]``
    the view and flat cell index of the detection a query came from, ``cells`` ``[h * w, 2]`` the cells' pixels.
    """
    num_views = cameras.rotation.shape[0]
    pixels, depth = cameras.project(points[:, None, :].expand(-1, num_views, 3))  # [Q, V, 2], [Q, V]
    focal = cameras.intrinsics[:, 0, 0]  # [V]
    radius_px = radius_mm[:, None] * focal / depth.clamp(min=1.0) + stride  # [Q, V]
    offset = (cells[None, None] - pixels[:, :, None, :]).abs()  # [Q, V, h*w, 2]
    allowed = (offset <= radius_px[..., None, None]).all(dim=-1) & (depth > 0)[..., None]
    allowed = allowed.flatten(1)  # [Q, V * h * w], view-major like the memory tokens
    own = own_view * cells.shape[0] + own_cell
    allowed[torch.arange(len(own), device=own.device), own] = True
    return allowed
