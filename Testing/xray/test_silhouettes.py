"""Organ silhouettes: every label voxel projects inside its organ's 2D box, the box is the tight box of the
rendered organ, and the 3D box agrees with the project's own voxel-box geometry."""

from __future__ import annotations

import itertools

import numpy as np
import SimpleITK as sitk
import torch
from organdetr.image_geometry import index_to_physical_matrix
from organdetr.xray.camera import CArmGeometry
from organdetr.xray.render import AttenuationVolume, RenderConfig, render
from organdetr.xray.scenes import scan_centre
from organdetr.xray.silhouettes import clip_to_detector, silhouette_box, silhouette_boxes, world_box
from organdetr_client.box_geometry import voxel_bounds_to_physical
from organdetr_client.schema import VoxelBounds
from xray_case import HeadNeckCase


def geometry_for(case: HeadNeckCase, **changes) -> CArmGeometry:
    centre = scan_centre(case.ct) + np.array([12.0, -25.0, 18.0])  # a shifted isocentre, as in training scenes
    return CArmGeometry(isocenter=tuple(centre), start_angle_deg=17.0, **changes)


def test_every_label_voxel_projects_inside_its_silhouette_box(pt_201: HeadNeckCase) -> None:
    labels = sitk.GetArrayFromImage(pt_201.label)
    affine = index_to_physical_matrix(pt_201.label)
    cube = np.array(list(itertools.product((-0.5, 0.5), repeat=3)))
    for camera in geometry_for(pt_201).cameras():
        for organ, corners in enumerate(pt_201.corners, start=1):
            box = silhouette_box(camera, corners)
            kji = np.argwhere(labels == organ)
            assert len(kji) > 0
            # Every voxel centre and every corner of every voxel (not only the surface corners the box comes from).
            index = (kji[:, None, ::-1] + np.concatenate([np.zeros((1, 3)), cube])[None]).reshape(-1, 3)
            pixels, depth = camera.project(torch.from_numpy(index @ affine[:3, :3].T + affine[:3, 3]))
            pixels = pixels.numpy()
            assert bool((depth > 0).all())
            assert (pixels >= box[:2] - 1e-9).all() and (pixels <= box[2:] + 1e-9).all(), organ
            # Tight: the box's sides are touched by the organ.
            np.testing.assert_allclose(pixels.min(axis=0), box[:2], atol=1e-9)
            np.testing.assert_allclose(pixels.max(axis=0), box[2:], atol=1e-9)


def test_silhouette_box_agrees_with_the_rendered_organ(pt_201: HeadNeckCase) -> None:
    """Two independent routes agree: projected voxel corners and the pixels whose rays cross the organ in the ray
    caster. Inside a voxel's cube trilinear interpolation is positive, and it vanishes beyond the cube of side two
    voxels around the centre; so the rendered footprint's box is sandwiched between the silhouette box shrunk by a
    pixel (rays go through pixel centres) and the projected box of those wider cubes."""
    labels = sitk.GetArrayFromImage(pt_201.label)
    affine = index_to_physical_matrix(pt_201.label)
    spread = np.array(list(itertools.product((-1.0, 1.0), repeat=3)))
    cameras = geometry_for(pt_201, num_views=3).cameras()
    for organ in (1, 4, 7):  # brainstem, left parotid, mandible
        mask = sitk.GetImageFromArray(np.where(labels == organ, 0, -1000).astype(np.int16))
        mask.CopyInformation(pt_201.label)
        volume = AttenuationVolume.from_image(mask)
        centres = np.argwhere(labels == organ)[:, ::-1].astype(np.float64)
        support = (centres[:, None] + spread[None]).reshape(-1, 3) @ affine[:3, :3].T + affine[:3, 3]
        for camera in cameras:
            image = render(volume, camera, RenderConfig(step_voxels=0.25)).numpy()
            rows, columns = np.nonzero(image > 0)
            rendered = np.array([columns.min(), rows.min(), columns.max(), rows.max()], dtype=np.float64)
            spread_box = silhouette_box(camera, support)
            assert (rendered[:2] > spread_box[:2]).all() and (rendered[2:] < spread_box[2:]).all()
            box = silhouette_box(camera, pt_201.corners[organ - 1])
            assert (rendered[:2] < box[:2] + 1.0).all() and (rendered[2:] > box[2:] - 1.0).all()


def test_world_box_is_the_voxel_box(pt_201: HeadNeckCase) -> None:
    """For this axis-aligned (PLI) scan the world box is the project's physical box of the organ's voxel bounds."""
    labels = sitk.GetArrayFromImage(pt_201.label)
    for organ, corners in enumerate(pt_201.corners, start=1):
        kji = np.argwhere(labels == organ)
        bounds = VoxelBounds(min_ijk=tuple(kji.min(axis=0)[::-1]), max_ijk_inclusive=tuple(kji.max(axis=0)[::-1]))
        physical = voxel_bounds_to_physical(bounds, pt_201.label)
        rotation = np.array(physical.orientation).reshape(3, 3)
        size = np.abs(rotation) @ np.array(physical.size)  # sizes along the world axes
        np.testing.assert_allclose(world_box(corners), [*physical.center, *size], atol=1e-6)


def test_boxes_are_clipped_to_the_detector_and_missing_when_off_it(pt_201: HeadNeckCase) -> None:
    geometry = geometry_for(pt_201, rows=32, columns=32, pixel_spacing_mm=5.0)  # a 100 mm field: organs cut off
    boxes = np.stack([silhouette_boxes(geometry.cameras(), c) for c in pt_201.corners], axis=1)
    finite = boxes[np.isfinite(boxes).all(axis=-1)]
    assert len(finite) > 0
    assert (finite[:, :2] >= -0.5).all() and (finite[:, 2:] <= 31.5).all()
    assert (finite[:, 2:] > finite[:, :2]).all()
    off = clip_to_detector(np.array([40.0, 2.0, 50.0, 9.0]), geometry.cameras()[0])
    assert np.isnan(off).all()
