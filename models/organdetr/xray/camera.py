"""The X-ray camera model: one pinhole camera per view, and the C-arm that places them.

Conventions (the one definition every X-ray module uses):

* **World** = the CT's physical frame, LPS millimetres (``+x`` left, ``+y`` posterior, ``+z`` superior), or whatever
  frame a ``views.json`` defines for real radiographs.
* **Camera frame**: origin at the X-ray source (the focal spot, the centre of projection); ``+z`` points from the
  source towards the detector along the principal ray; ``+x`` is the detector's column direction (``u`` grows) and
  ``+y`` its row direction (``v`` grows), so the frame is right-handed.
* **Extrinsics**: ``x_camera = rotation @ x_world + translation`` (camera-from-world; ``rotation`` is a proper
  rotation).
* **Intrinsics** ``K`` (pixels): ``[u w, v w, w] = K x_camera`` with ``w`` the depth along ``+z``; focal lengths
  ``f = source_to_detector / pixel_spacing``; the principal point is where the principal ray meets the detector.
* **Pixels**: ``u`` = column, ``v`` = row, pixel centres at integer coordinates, so pixel ``(r, c)`` spans
  ``[c - 1/2, c + 1/2] x [r - 1/2, r + 1/2]`` and the detector spans ``[-1/2, columns - 1/2] x [-1/2, rows - 1/2]``.

A :class:`CArmGeometry` rotates source and detector about the head-foot axis (world ``+z``) around an isocentre:
at angle 0 the source is anterior of the patient (an AP view: the beam runs anterior -> posterior, rows run
superior -> inferior, columns patient right -> left, the radiological display), and positive angles turn the
source towards the patient's left.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import UserInputError

# Tolerance of the orthonormality check on rotations (|R R^T - I| entries, |det R - 1|): float32 round trips pass.
ROTATION_TOLERANCE = 1e-4
# Source direction at angle 0 (anterior = -y in LPS), detector row direction (inferior = -z) and rotation axis (+z).
_ANTERIOR = np.array([0.0, -1.0, 0.0])
_INFERIOR = np.array([0.0, 0.0, -1.0])
_ROTATION_AXIS = np.array([0.0, 0.0, 1.0])
# Views wider than this (pixels per side) are refused as implausible: no detector has more.
MAX_DETECTOR_PIXELS = 8192


def check_rotation(rotation: np.ndarray) -> None:
    """Raise :class:`UserInputError` unless ``rotation`` is a finite proper 3x3 rotation matrix."""
    if rotation.shape != (3, 3) or not np.isfinite(rotation).all():
        raise UserInputError("rotation must be a finite 3x3 matrix")
    deviation = float(np.abs(rotation @ rotation.T - np.eye(3)).max())
    if deviation > ROTATION_TOLERANCE:
        raise UserInputError(f"rotation is not orthonormal (R R^T differs from identity by {deviation:.3g})")
    if np.linalg.det(rotation) < 0:
        raise UserInputError("rotation is a reflection (determinant -1), not a rotation")


def check_intrinsics(intrinsics: np.ndarray) -> None:
    """Raise :class:`UserInputError` unless ``intrinsics`` is a finite pinhole matrix with positive focal lengths."""
    if intrinsics.shape != (3, 3) or not np.isfinite(intrinsics).all():
        raise UserInputError("intrinsics must be a finite 3x3 matrix")
    if intrinsics[0, 0] <= 0 or intrinsics[1, 1] <= 0:
        raise UserInputError("intrinsics: focal lengths K[0][0] and K[1][1] must be positive")
    if not np.allclose(intrinsics[1:, :], [[0.0, intrinsics[1, 1], intrinsics[1, 2]], [0.0, 0.0, 1.0]]):
        raise UserInputError("intrinsics: the second row must be [0, fy, cy] and the third [0, 0, 1]")


def project(
    intrinsics: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor, points: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The projection of every X-ray module: world points ``[..., 3]`` -> pixels ``[..., 2]`` and depth ``[...]``.
    The camera matrices (``[3, 3]``, ``[3, 3]``, ``[3]``, or stacked ``[V, ...]`` for points ``[..., V, 3]``)
    broadcast against the points."""
    in_camera = (rotation @ points[..., None])[..., 0] + translation
    depth = in_camera[..., 2]
    homogeneous = (intrinsics @ in_camera[..., None])[..., 0]
    return homogeneous[..., :2] / depth[..., None], depth


def unproject(
    intrinsics: torch.Tensor,
    rotation: torch.Tensor,
    translation: torch.Tensor,
    pixels: torch.Tensor,
    depth: torch.Tensor,
) -> torch.Tensor:
    """The inverse of :func:`project`: pixels ``[..., 2]`` at ``depth`` ``[...]`` -> world points ``[..., 3]``."""
    homogeneous = torch.cat([pixels, torch.ones_like(pixels[..., :1])], dim=-1)
    ray = (torch.linalg.inv(intrinsics) @ homogeneous[..., None])[..., 0]  # camera frame, at depth 1
    return (rotation.transpose(-1, -2) @ (ray * depth[..., None] - translation)[..., None])[..., 0]


@dataclass(eq=False)
class CameraStack:
    """The cameras of one scene as tensors ``[views, ...]`` on one device, for batched projection in a network."""

    intrinsics: torch.Tensor  # [V, 3, 3]
    rotation: torch.Tensor  # [V, 3, 3]
    translation: torch.Tensor  # [V, 3]
    rows: int
    columns: int

    @classmethod
    def from_cameras(
        cls, cameras: Sequence[Camera], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> CameraStack:
        def stack(name: str) -> torch.Tensor:
            return torch.as_tensor(np.stack([getattr(c, name) for c in cameras]), dtype=dtype, device=device)

        return cls(stack("intrinsics"), stack("rotation"), stack("translation"), cameras[0].rows, cameras[0].columns)

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Points ``[..., V, 3]`` (one per view, or broadcast) -> pixels ``[..., V, 2]`` and depth ``[..., V]``."""
        return project(self.intrinsics, self.rotation, self.translation, points)

    def unproject(self, pixels: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Pixels ``[..., V, 2]`` at depth ``[..., V]`` -> world points ``[..., V, 3]``."""
        return unproject(self.intrinsics, self.rotation, self.translation, pixels, depth)


@dataclass(frozen=True, eq=False)
class Camera:
    """One X-ray view's projective geometry (see the module docstring for the conventions)."""

    intrinsics: np.ndarray  # [3, 3] K, pixels
    rotation: np.ndarray  # [3, 3] camera-from-world
    translation: np.ndarray  # [3] camera-from-world, mm
    rows: int
    columns: int

    def __post_init__(self) -> None:
        for name in ("intrinsics", "rotation", "translation"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        check_intrinsics(self.intrinsics)
        check_rotation(self.rotation)
        if self.translation.shape != (3,) or not np.isfinite(self.translation).all():
            raise UserInputError("translation must be 3 finite numbers")
        for name in ("rows", "columns"):
            size = getattr(self, name)
            if not isinstance(size, int) or not 1 <= size <= MAX_DETECTOR_PIXELS:
                raise UserInputError(f"{name} must be an integer between 1 and {MAX_DETECTOR_PIXELS}")

    @property
    def source_position(self) -> np.ndarray:
        """The X-ray source in world coordinates, mm."""
        return -self.rotation.T @ self.translation

    @property
    def principal_direction(self) -> np.ndarray:
        """Unit vector from the source along the principal ray (camera ``+z``), in world coordinates."""
        return self.rotation[2].copy()

    def _matrices(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        def tensor(array: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(array, dtype=like.dtype, device=like.device)

        return tensor(self.intrinsics), tensor(self.rotation), tensor(self.translation)

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World points ``[..., 3]`` -> pixel coordinates ``(u, v)`` ``[..., 2]`` and depth ``[...]`` (mm along the
        principal ray from the source; points behind the source have depth <= 0 and meaningless pixels)."""
        return project(*self._matrices(points), points)

    def unproject(self, pixels: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Pixel coordinates ``[..., 2]`` at ``depth`` ``[...]`` (mm along the principal ray) -> world points."""
        return unproject(*self._matrices(pixels), pixels, depth)

    def ray_directions(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unit world vectors ``[..., 3]`` from the source through pixel coordinates ``[..., 2]``."""
        source = torch.as_tensor(self.source_position, dtype=pixels.dtype, device=pixels.device)
        direction = self.unproject(pixels, torch.ones_like(pixels[..., 0])) - source
        return direction / torch.linalg.norm(direction, dim=-1, keepdim=True)

    def pixel_centres(self, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> torch.Tensor:
        """``(u, v)`` of every pixel centre, ``[rows, columns, 2]``."""
        v, u = torch.meshgrid(
            torch.arange(self.rows, dtype=dtype, device=device),
            torch.arange(self.columns, dtype=dtype, device=device),
            indexing="ij",
        )
        return torch.stack([u, v], dim=-1)


def _rotation_about(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rodrigues' rotation matrix about a unit ``axis``."""
    cross = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + math.sin(angle_rad) * cross + (1.0 - math.cos(angle_rad)) * cross @ cross


@dataclass(frozen=True)
class CArmGeometry:
    """A C-arm acquisition: ``num_views`` views spread over ``arc_deg`` about the head-foot axis through
    ``isocenter``. A full circle (360 deg) spaces views by ``360 / num_views`` (no duplicate end view); a shorter arc
    puts the first and last view at its ends."""

    num_views: int = 10
    arc_deg: float = 360.0
    start_angle_deg: float = 0.0
    source_to_isocenter_mm: float = 750.0
    source_to_detector_mm: float = 1200.0
    rows: int = 128
    columns: int = 128
    # A 640 mm detector over 128 pixels: a 400 mm field of view at the isocentre, which holds the 320-384 mm long
    # OpenKBP head-and-neck scans with a +-30 mm isocentre shift (a smaller field cuts the spinal cord off).
    pixel_spacing_mm: float = 5.0
    isocenter: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))

    def __post_init__(self) -> None:
        if not 1 <= self.num_views <= 360:
            raise UserInputError("the number of views must be between 1 and 360")
        if not (math.isfinite(self.arc_deg) and 0.0 <= self.arc_deg <= 360.0):
            raise UserInputError("the arc must be between 0 and 360 degrees")
        if not all(math.isfinite(v) for v in (self.start_angle_deg, *self.isocenter)):
            raise UserInputError("the start angle and isocentre must be finite")
        if not 0.0 < self.source_to_isocenter_mm < self.source_to_detector_mm < 1e5:
            raise UserInputError("distances must satisfy 0 < source-to-isocentre < source-to-detector")
        if not (math.isfinite(self.pixel_spacing_mm) and self.pixel_spacing_mm > 0):
            raise UserInputError("the pixel spacing must be a positive number of mm")
        for name in ("rows", "columns"):
            if not 1 <= getattr(self, name) <= MAX_DETECTOR_PIXELS:
                raise UserInputError(f"detector {name} must be between 1 and {MAX_DETECTOR_PIXELS}")

    @property
    def angles_deg(self) -> list[float]:
        full_circle = self.arc_deg >= 360.0
        divisions = self.num_views if full_circle else max(self.num_views - 1, 1)
        return [self.start_angle_deg + self.arc_deg * i / divisions for i in range(self.num_views)]

    def intrinsics(self) -> np.ndarray:
        focal = self.source_to_detector_mm / self.pixel_spacing_mm
        return np.array([[focal, 0.0, (self.columns - 1) / 2], [0.0, focal, (self.rows - 1) / 2], [0.0, 0.0, 1.0]])

    def camera(self, angle_deg: float) -> Camera:
        turn = _rotation_about(_ROTATION_AXIS, math.radians(angle_deg))
        towards_source = turn @ _ANTERIOR
        source = np.asarray(self.isocenter, dtype=np.float64) + self.source_to_isocenter_mm * towards_source
        z_axis = -towards_source
        y_axis = turn @ _INFERIOR
        rotation = np.stack([np.cross(y_axis, z_axis), y_axis, z_axis])  # rows: camera axes in world coordinates
        return Camera(self.intrinsics(), rotation, -rotation @ source, self.rows, self.columns)

    def cameras(self) -> list[Camera]:
        return [self.camera(angle) for angle in self.angles_deg]


def closest_point_to_principal_rays(cameras: Sequence[Camera]) -> np.ndarray:
    """The world point nearest (least squares) to every camera's principal ray: the isocentre of a C-arm whose
    views do not record it. Needs two non-parallel rays."""
    normal = np.zeros((3, 3))
    right = np.zeros(3)
    for camera in cameras:
        direction = camera.principal_direction
        projector = np.eye(3) - np.outer(direction, direction)
        normal += projector
        right += projector @ camera.source_position
    if np.linalg.matrix_rank(normal, tol=1e-6) < 3:
        raise UserInputError("the views' principal rays are parallel: the isocentre is undetermined")
    return np.linalg.solve(normal, right)
