"""The camera model: projection and unprojection invert each other, the C-arm places sources and detectors as
documented, and bad geometry is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from organdetr.errors import UserInputError
from organdetr.xray.camera import Camera, CArmGeometry, closest_point_to_principal_rays


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_project_unproject_round_trip() -> None:
    rng = np.random.default_rng(0)
    intrinsics = np.array([[300.0, 0.0, 60.5], [0.0, 310.0, 40.0], [0.0, 0.0, 1.0]])
    camera = Camera(intrinsics, random_rotation(rng), rng.normal(size=3) * 100, rows=80, columns=120)
    points = torch.from_numpy(rng.normal(size=(50, 3)) * 50 + camera.source_position + 800 * camera.principal_direction)
    pixels, depth = camera.project(points)
    assert bool((depth > 0).all())
    torch.testing.assert_close(camera.unproject(pixels, depth), points, rtol=0, atol=1e-9)
    # Unprojecting pixels at a depth and projecting again gives the same pixels.
    again, depth_again = camera.project(camera.unproject(pixels, torch.full_like(depth, 321.0)))
    torch.testing.assert_close(again, pixels, rtol=0, atol=1e-9)
    torch.testing.assert_close(depth_again, torch.full_like(depth, 321.0), rtol=0, atol=1e-9)


def test_c_arm_places_source_detector_and_isocentre() -> None:
    isocenter = np.array([10.0, -20.0, 30.0])
    geometry = CArmGeometry(num_views=10, rows=64, columns=96, isocenter=tuple(isocenter))
    cameras = geometry.cameras()
    assert geometry.angles_deg == pytest.approx([36.0 * i for i in range(10)])
    for camera in cameras:
        assert np.linalg.norm(camera.source_position - isocenter) == pytest.approx(750.0)
        pixel, depth = camera.project(torch.from_numpy(isocenter)[None])
        # The isocentre is on the principal ray: it projects to the detector centre.
        np.testing.assert_allclose(pixel[0].numpy(), [47.5, 31.5], atol=1e-9)
        assert float(depth[0]) == pytest.approx(750.0)
        # Rotation about the head-foot axis: every source lies in the isocentre's axial plane.
        assert camera.source_position[2] == pytest.approx(isocenter[2])
    # View 0 is AP: the source is anterior (-y in LPS); patient's left (+x) is to the right in the image and
    # superior (+z) at the top.
    ap = cameras[0]
    np.testing.assert_allclose(ap.source_position, isocenter + np.array([0.0, -750.0, 0.0]), atol=1e-9)
    left, _ = ap.project(torch.from_numpy(isocenter + np.array([[10.0, 0.0, 0.0], [0.0, 0.0, 10.0]])))
    assert float(left[0, 0]) > 47.5 and float(left[1, 1]) < 31.5
    # Magnification SDD / SID: 10 mm at the isocentre is 16 mm on the detector = 16 / 5 pixels.
    assert float(left[0, 0]) - 47.5 == pytest.approx(10.0 * 1200.0 / 750.0 / 5.0)
    np.testing.assert_allclose(closest_point_to_principal_rays(cameras), isocenter, atol=1e-9)


def test_partial_arc_has_views_at_both_ends() -> None:
    assert CArmGeometry(num_views=5, arc_deg=180.0, start_angle_deg=-90.0).angles_deg == pytest.approx(
        [-90.0, -45.0, 0.0, 45.0, 90.0]
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rotation": np.diag([1.0, 1.0, 1.1])}, "not orthonormal"),
        ({"rotation": np.diag([1.0, 1.0, -1.0])}, "reflection"),
        ({"intrinsics": np.diag([-300.0, 300.0, 1.0])}, "focal"),
        ({"translation": np.array([0.0, np.nan, 0.0])}, "finite"),
        ({"rows": 0}, "rows"),
    ],
)
def test_bad_camera_is_refused(change: dict, message: str) -> None:
    arguments = {
        "intrinsics": np.diag([300.0, 300.0, 1.0]),
        "rotation": np.eye(3),
        "translation": np.zeros(3),
        "rows": 10,
        "columns": 10,
    }
    with pytest.raises(UserInputError, match=message):
        Camera(**{**arguments, **change})
