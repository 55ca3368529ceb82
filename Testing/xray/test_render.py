"""The ray caster: exact line integrals through uniform phantoms, bright voxels on their projected pixels, the same
images whatever the file's orientation, and chunking that changes memory, not results."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from organdetr.image_geometry import index_to_physical_matrix
from organdetr.xray.camera import CArmGeometry
from organdetr.xray.render import MU_WATER_PER_MM, AttenuationVolume, RenderConfig, render, render_views

WATER_HU, AIR_HU = 0.0, -1000.0


def ct_image(hu: np.ndarray, spacing: float, origin=(0.0, 0.0, 0.0), direction=None) -> sitk.Image:
    """A CT from an array in SimpleITK order [k, j, i]."""
    image = sitk.GetImageFromArray(hu.astype(np.int16))
    image.SetSpacing((spacing,) * 3)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(tuple(np.asarray(direction, dtype=np.float64).ravel()))
    return image


def grid_centre(image: sitk.Image) -> np.ndarray:
    return (index_to_physical_matrix(image) @ np.append((np.array(image.GetSize()) - 1) / 2, 1.0))[:3]


def test_uniform_block_gives_exact_path_lengths() -> None:
    """A volume of water everywhere: each pixel is mu_water times the ray's path through the volume's outer edges."""
    image = ct_image(np.full((40, 30, 20), WATER_HU), spacing=2.0, origin=(-19.0, -29.0, -39.0))  # 40 x 60 x 80 mm
    geometry = CArmGeometry(num_views=3, rows=24, columns=24, pixel_spacing_mm=6.0, start_angle_deg=20.0)
    volume = AttenuationVolume.from_image(image)
    low, high = np.array([-20.0, -30.0, -40.0]), np.array([20.0, 30.0, 40.0])
    for camera in geometry.cameras():
        image_2d = render(volume, camera).double()
        directions = camera.ray_directions(camera.pixel_centres()).numpy()
        source = camera.source_position
        with np.errstate(divide="ignore"):
            t1, t2 = (low - source) / directions, (high - source) / directions
        entry = np.minimum(t1, t2).max(axis=-1)
        exit_ = np.maximum(t1, t2).min(axis=-1)
        expected = MU_WATER_PER_MM * np.clip(exit_ - entry, 0.0, None)
        assert expected.max() > 0.5  # the rays do cross the block
        np.testing.assert_allclose(image_2d.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_water_ball_gives_chord_lengths() -> None:
    """A voxelised ball of radius 30 mm: line integrals follow 2 sqrt(r^2 - d^2) (d: ray-to-centre distance) up to
    the voxelisation of the surface."""
    n, spacing, radius = 64, 1.25, 30.0
    axis = (np.arange(n) - (n - 1) / 2) * spacing
    k, j, i = np.meshgrid(axis, axis, axis, indexing="ij")
    hu = np.where(i**2 + j**2 + k**2 <= radius**2, WATER_HU, AIR_HU)
    image = ct_image(hu, spacing, origin=(axis[0],) * 3)
    camera = CArmGeometry(num_views=1, rows=32, columns=32, pixel_spacing_mm=4.0, start_angle_deg=50.0).camera(50.0)
    integral = render(AttenuationVolume.from_image(image), camera).double().numpy()
    directions = camera.ray_directions(camera.pixel_centres()).numpy()
    source = camera.source_position
    along = -(source @ directions.reshape(-1, 3).T).reshape(directions.shape[:2])
    distance = np.linalg.norm(source + along[..., None] * directions, axis=-1)
    chord = 2.0 * np.sqrt(np.clip(radius**2 - distance**2, 0.0, None))
    inner = distance < 0.9 * radius
    assert inner.sum() > 100
    error = np.abs(integral - MU_WATER_PER_MM * chord)[inner]
    assert error.max() < MU_WATER_PER_MM * 2.0  # within 2 mm of path (voxel surface steps), of up to 60 mm
    assert error.mean() < MU_WATER_PER_MM * 0.5
    assert integral[distance > radius + 2 * spacing].max() == 0.0  # rays that miss the ball see only air


def test_bright_voxel_lands_on_its_projected_pixel() -> None:
    n, spacing = 48, 2.0
    rng = np.random.default_rng(3)
    geometry = CArmGeometry(num_views=4, rows=64, columns=64, pixel_spacing_mm=2.0, start_angle_deg=10.0)
    for _ in range(3):
        hu = np.full((n, n, n), AIR_HU)
        marker = rng.integers(8, n - 8, size=3)  # (i, j, k)
        hu[marker[2], marker[1], marker[0]] = 3000.0
        image = ct_image(hu, spacing, origin=(-47.0, -47.0, -47.0))
        world = (index_to_physical_matrix(image) @ np.append(marker, 1.0))[:3]
        images = render_views(AttenuationVolume.from_image(image), geometry.cameras(), RenderConfig(step_voxels=0.1))
        for camera, view in zip(geometry.cameras(), images, strict=True):
            pixel, _ = camera.project(torch.from_numpy(world)[None])
            row, column = np.unravel_index(int(view.argmax()), view.shape)
            assert (column, row) == tuple(int(v) for v in torch.round(pixel[0]))


def orientations() -> dict[str, np.ndarray]:
    """Direction matrices (columns = index axes in LPS) of the same anatomy stored in different ways."""
    angle = np.radians(25.0)
    oblique = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle) * 0.8, np.cos(angle) * 0.8, -0.6], [0.0, 0.0, 0.0]]
    )
    oblique[2] = np.cross(oblique[0], oblique[1])
    oblique, _ = np.linalg.qr(oblique)
    return {
        "LPS": np.eye(3),
        "RAS": np.diag([-1.0, -1.0, 1.0]),
        "LAS": np.diag([1.0, -1.0, 1.0]),
        "PLI": np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]),
        "oblique": oblique,
    }


def phantom_image(direction: np.ndarray, n: int = 56, spacing: float = 2.0) -> sitk.Image:
    """Two water ellipsoids and a bone ball in air, sampled on a grid with ``direction`` centred on the origin."""
    index = np.stack(np.meshgrid(*(np.arange(n),) * 3, indexing="ij"), axis=-1)[..., ::-1]  # [k, j, i, (i, j, k)]
    world = ((index - (n - 1) / 2) * spacing) @ direction.T
    x, y, z = world[..., 0], world[..., 1], world[..., 2]
    hu = np.full(world.shape[:3], AIR_HU)
    hu[(x / 40) ** 2 + (y / 30) ** 2 + (z / 45) ** 2 <= 1] = WATER_HU
    hu[((x - 15) / 10) ** 2 + ((y + 5) / 12) ** 2 + ((z - 10) / 20) ** 2 <= 1] = 600.0
    hu[(x + 12) ** 2 + (y - 8) ** 2 + (z + 15) ** 2 <= 8**2] = 1500.0
    origin = -direction @ np.full(3, (n - 1) / 2 * spacing)
    return ct_image(hu, spacing, origin=tuple(origin), direction=direction)


def test_same_anatomy_renders_the_same_in_every_orientation() -> None:
    geometry = CArmGeometry(num_views=3, rows=40, columns=40, pixel_spacing_mm=5.0, start_angle_deg=15.0)
    cameras = geometry.cameras()
    rendered = {
        name: render_views(AttenuationVolume.from_image(phantom_image(direction)), cameras)
        for name, direction in orientations().items()
    }
    reference = rendered.pop("LPS")
    for name, images in rendered.items():
        if name == "oblique":  # sampled on a different grid: equal up to the voxelisation of the surfaces
            difference = (images - reference).abs()
            assert float(difference.mean()) < 0.02 * float(reference.max()), name
        else:  # the same voxels, permuted and flipped: equal up to float rounding
            torch.testing.assert_close(images, reference, rtol=1e-4, atol=1e-4, msg=name)
    # The views differ from each other (the test would not notice a renderer that ignored the camera otherwise).
    assert float((reference[0] - reference[1]).abs().max()) > 0.1


@pytest.mark.parametrize("max_samples", [1, 5000])
def test_chunking_changes_nothing(max_samples: int) -> None:
    image = phantom_image(np.eye(3), n=32, spacing=3.0)
    camera = CArmGeometry(num_views=1, rows=20, columns=16, pixel_spacing_mm=6.0).camera(70.0)
    volume = AttenuationVolume.from_image(image)
    whole = render(volume, camera)
    chunked = render(volume, camera, RenderConfig(max_samples_per_chunk=max_samples))
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
