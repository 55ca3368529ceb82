"""Digitally reconstructed radiographs: line integrals of X-ray attenuation through a CT, by ray marching.

Each pixel's ray runs from the source through the pixel centre (:mod:`organdetr.xray.camera`), is clipped to the
volume's outer voxel edges (so air outside the scan adds nothing and no samples are wasted) and is sampled at evenly
spaced midpoints at most ``step_voxels`` apart along the index axis the ray crosses fastest; trilinear interpolation
(``grid_sample``) of the attenuation gives the integrand.
The pixel value is ``integral mu ds`` (dimensionless: ``mu`` per mm times mm), what a log-converted radiograph
``-log(I / I0)`` measures. Rays are processed in chunks of at most ``max_samples_per_chunk`` samples, which bounds
memory whatever the detector and volume sizes. The volume may have any orientation: rays are traced in its continuous
index space, so RAS, LPS or oblique files of the same anatomy give the same images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ..image_geometry import index_to_physical_matrix
from .camera import Camera

# Linear attenuation of water at a typical diagnostic effective energy (~70 keV), per mm.
MU_WATER_PER_MM = 0.02
HU_AIR = -1000.0


@dataclass(frozen=True)
class RenderConfig:
    """Ray-marching settings."""

    step_voxels: float = 0.5  # sample spacing along a ray, in voxels of the index axis the ray crosses fastest
    max_samples_per_chunk: int = 1 << 22  # ~100 MB of sample coordinates and values per chunk (float32)
    mu_water_per_mm: float = MU_WATER_PER_MM


@dataclass(frozen=True, eq=False)
class AttenuationVolume:
    """Linear attenuation (per mm) on a CT's voxel grid, ready for ray marching on ``values.device``."""

    values: torch.Tensor  # [k, j, i] (SimpleITK array order), float32
    index_to_world: np.ndarray  # [4, 4] continuous ITK index (i, j, k) -> world LPS mm
    spacing: tuple[float, float, float]

    @classmethod
    def from_image(
        cls, image: sitk.Image, device: torch.device | str = "cpu", config: RenderConfig = RenderConfig()
    ) -> AttenuationVolume:
        """From a CT in Hounsfield units: ``mu = mu_water (1 + HU / 1000)``, negative values (below air) clipped."""
        hu = torch.from_numpy(sitk.GetArrayFromImage(image).astype(np.float32)).to(device)
        values = hu.div_(-HU_AIR).add_(1.0).mul_(config.mu_water_per_mm).clamp_(min=0.0)  # in place: one copy in memory
        index_to_world = index_to_physical_matrix(image)
        # Air adds nothing to a line integral: crop to the attenuating voxels so rays skip the air around the body
        # (an OpenKBP scan's field is often three times as wide as the neck). One voxel of air is kept around them:
        # trilinear interpolation falls off over a voxel, so the images stay exactly those of the whole volume.
        occupied = values > 0
        if bool(occupied.any()):
            first_kji, last_kji = [], []
            for axis in range(3):  # per-axis projections: no index list of every voxel (GBs for a 512^2 CT)
                along = torch.nonzero(occupied.any(dim=tuple(a for a in range(3) if a != axis)))[:, 0]
                first_kji.append(max(int(along[0]) - 1, 0))
                last_kji.append(min(int(along[-1]) + 1, values.shape[axis] - 1))
            values = values[tuple(slice(a, b + 1) for a, b in zip(first_kji, last_kji, strict=True))]
            shift = np.eye(4)
            shift[:3, 3] = first_kji[::-1]
            index_to_world = index_to_world @ shift
        return cls(values.contiguous(), index_to_world, tuple(float(s) for s in image.GetSpacing()))

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        k, j, i = self.values.shape
        return i, j, k


def _clip_to_volume(
    source: torch.Tensor, directions: torch.Tensor, shape_ijk: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit ray parameters ``[R]`` of rays ``source + t * directions`` (index space) through the box of
    outer voxel edges ``[-1/2, n - 1/2]`` per axis, never behind the source; exit <= entry for rays that miss."""
    lower, upper = -0.5 - source, shape_ijk - 0.5 - source
    with torch.no_grad():
        safe = torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    t_lower, t_upper = lower / safe, upper / safe
    entry = torch.minimum(t_lower, t_upper).amax(dim=-1).clamp(min=0.0)
    exit_ = torch.maximum(t_lower, t_upper).amin(dim=-1)
    return entry, exit_


def render(volume: AttenuationVolume, camera: Camera, config: RenderConfig = RenderConfig()) -> torch.Tensor:
    """Line integrals ``[rows, columns]`` (float32, on the volume's device) of one view."""
    return render_views(volume, [camera], config)[0]


def render_views(
    volume: AttenuationVolume, cameras: Sequence[Camera], config: RenderConfig = RenderConfig()
) -> torch.Tensor:
    """Line integrals ``[views, rows, columns]`` of every camera (all the same detector size)."""
    device = volume.values.device
    world_to_index = np.linalg.inv(volume.index_to_world)
    shape_ijk = torch.tensor(volume.shape_ijk, dtype=torch.float64, device=device)
    images = []
    for camera in cameras:
        # Ray parameter t is in world mm along unit world directions; geometry in float64, sampling in float32.
        directions_world = camera.ray_directions(camera.pixel_centres(device=device)).reshape(-1, 3)
        linear = torch.as_tensor(world_to_index[:3, :3], device=device)
        source = torch.as_tensor(world_to_index[:3, :3] @ camera.source_position + world_to_index[:3, 3], device=device)
        directions = directions_world @ linear.T
        entry, exit_ = _clip_to_volume(source, directions, shape_ijk)
        length = (exit_ - entry).clamp(min=0.0)
        # Samples per ray: no index axis advances more than step_voxels voxels between samples (the sampling a
        # trilinear field needs along that ray; a ray across 5 mm voxels needs fewer samples than one along 2 mm).
        voxels_crossed = length * directions.abs().amax(dim=-1)
        counts = torch.ceil(voxels_crossed / config.step_voxels).clamp(min=1.0)
        integral = torch.zeros(len(length), dtype=torch.float32, device=device)
        if len(length) and float(length.max()) > 0.0:
            rays_per_chunk = max(1, config.max_samples_per_chunk // int(counts.max()))
            for start in range(0, len(length), rays_per_chunk):
                chunk = slice(start, start + rays_per_chunk)
                integral[chunk] = _march(volume, source, directions[chunk], entry[chunk], length[chunk], counts[chunk])
        images.append(integral.reshape(camera.rows, camera.columns))
    return torch.stack(images)


def _march(
    volume: AttenuationVolume,
    source: torch.Tensor,
    directions: torch.Tensor,
    entry: torch.Tensor,
    length: torch.Tensor,
    counts: torch.Tensor,
) -> torch.Tensor:
    """Midpoint-rule integrals of a chunk of clipped rays, each with ``counts`` equal steps of its own, so a pixel's
    value does not depend on which rays share its chunk."""
    step = length / counts
    samples = int(counts.max())
    sizes = torch.tensor(volume.shape_ijk, dtype=torch.float64, device=source.device)
    # align_corners=True: -1 and +1 are the centres of the first and last voxels; grid order (x, y, z) = (i, j, k).
    # Each ray's first sample and step in grid units are exact (float64); the samples in between need only float32.
    to_grid = 2.0 / (sizes - 1.0).clamp(min=1.0)  # a one-voxel axis: any coordinate samples its one slice
    first = (source + (entry + 0.5 * step)[:, None] * directions) * to_grid - 1.0
    stride = (step[:, None] * directions * to_grid).to(torch.float32)
    sample_index = torch.arange(samples, dtype=torch.float32, device=source.device)
    grid = first.to(torch.float32)[:, None, :] + sample_index[None, :, None] * stride[:, None, :]  # [R, S, 3]
    sampled = F.grid_sample(
        volume.values[None, None], grid[None, None], mode="bilinear", padding_mode="border", align_corners=True
    )[0, 0, 0]
    in_ray = sample_index[None, :] < counts.to(torch.float32)[:, None]  # samples past a shorter ray's exit
    return (sampled * in_ray).sum(dim=-1) * step.to(torch.float32)
