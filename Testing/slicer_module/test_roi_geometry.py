"""ROIs land on the organs: for RAS, PLI, LPS, LAS, oblique and parent-transformed volumes, each ROI's world corners
are the label map's extreme voxel edges as MRML itself places them (volume IJKToRAS + parent transform)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
from conftest import OPENKBP_CLASSES, label_derived_result
from organdetr_client.box_geometry import physical_box_to_voxel_bounds
from organdetr_client.same_grid import grid_differences
from OrganDETRSlicerLib.roi_nodes import (
    create_rois,
    roi_box,
    roi_label,
    roi_world_corners,
    rois_to_result,
)
from OrganDETRSlicerLib.volume_geometry import VolumeGeometry, numpy_from_vtk_matrix, volume_geometry
from vtk.util.numpy_support import vtk_to_numpy

CORNER_TOLERANCE_MM = 1e-3  # ROIs keep their control point in single precision


def _oblique(image: sitk.Image) -> sitk.Image:
    """Same voxels, header rotated by 20 degrees about an oblique axis (an oblique acquisition)."""
    rotation = sitk.VersorTransform((0.3, 0.5, 0.8), np.deg2rad(20.0))
    direction = np.array(rotation.GetMatrix()).reshape(3, 3) @ np.array(image.GetDirection()).reshape(3, 3)
    oblique = sitk.Image(image)
    oblique.SetDirection(direction.ravel().tolist())
    return oblique


VARIANTS = {
    "PLI": lambda image: image,
    "LPS": lambda image: sitk.DICOMOrient(image, "LPS"),
    "LAS": lambda image: sitk.DICOMOrient(image, "LAS"),
    "oblique": _oblique,
}


def _variant_files(head_neck_case, tmp_path, variant: str):
    """CT and label map with the variant's header (axis permutations/flips or rotation); voxels unchanged."""
    paths = []
    for source, name in zip(head_neck_case, ("ct.nrrd", "label.nrrd"), strict=True):
        image = VARIANTS[variant](sitk.ReadImage(str(source)))
        sitk.WriteImage(image, str(tmp_path / name))
        paths.append(tmp_path / name)
    return paths


def _label_edge_corners(label_node, label_value: int, world_transform: np.ndarray) -> np.ndarray:
    """World corners of the label's extreme voxel edges, computed by MRML (IJKToRAS) and the parent transform."""
    dims = label_node.GetImageData().GetDimensions()
    voxels = vtk_to_numpy(label_node.GetImageData().GetPointData().GetScalars()).reshape(dims[::-1])  # k, j, i
    kji = np.argwhere(voxels == label_value)
    low, high = kji.min(0)[::-1] - 0.5, kji.max(0)[::-1] + 0.5
    ijk_to_ras = vtk.vtkMatrix4x4()
    label_node.GetIJKToRASMatrix(ijk_to_ras)
    corners = np.array([[(low, high)[b][axis] for axis, b in enumerate(bits)] for bits in np.ndindex(2, 2, 2)])
    homogeneous = np.c_[corners, np.ones(8)]
    return (world_transform @ numpy_from_vtk_matrix(ijk_to_ras) @ homogeneous.T).T[:, :3]


def _assert_same_corners(actual: np.ndarray, expected: np.ndarray) -> None:
    distances = np.linalg.norm(actual[:, None, :] - expected[None, :, :], axis=2)
    assert distances.min(axis=1).max() < CORNER_TOLERANCE_MM
    assert distances.min(axis=0).max() < CORNER_TOLERANCE_MM


def _parent_transform(mrml, volumes):
    """A rigid transform (rotation about an oblique axis + translation) set as the volumes' parent."""
    transform = mrml.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "Registration")
    matrix = vtk.vtkTransform()
    matrix.Translate(12.5, -30.0, 7.25)
    matrix.RotateWXYZ(25.0, 0.2, -0.4, 0.9)
    transform.SetMatrixTransformToParent(matrix.GetMatrix())
    for volume in volumes:
        volume.SetAndObserveTransformNodeID(transform.GetID())
    return numpy_from_vtk_matrix(matrix.GetMatrix())


@pytest.mark.parametrize("variant", [*VARIANTS, "parent-transformed"])
def test_rois_land_on_label_boxes(mrml, head_neck_case, tmp_path, variant):
    ct_path, label_path = _variant_files(head_neck_case, tmp_path, "oblique" if variant == "oblique" else "PLI")
    if variant in ("LPS", "LAS", "PLI"):
        ct_path, label_path = _variant_files(head_neck_case, tmp_path, variant)
    volume = mrml.load_volume(ct_path)
    labels = mrml.load_volume(label_path, "labels", labelmap=True)
    world = _parent_transform(mrml, [volume, labels]) if variant == "parent-transformed" else np.eye(4)
    result = label_derived_result(ct_path, label_path, OPENKBP_CLASSES)
    assert len(result.detections) == len(OPENKBP_CLASSES)

    rois = create_rois(mrml.scene, volume, result)

    assert [roi_label(roi) for roi in rois] == OPENKBP_CLASSES
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml.scene)
    volume_item = hierarchy.GetItemByDataNode(volume)
    assert all(hierarchy.GetItemParent(hierarchy.GetItemByDataNode(roi)) == volume_item for roi in rois)
    for roi, detection in zip(rois, result.detections, strict=True):
        assert roi.GetName() == detection.label
        assert roi.GetParentTransformNode() is volume.GetParentTransformNode()
        _assert_same_corners(roi_world_corners(roi), _label_edge_corners(labels, detection.class_id, world))
        if variant == "oblique":  # an oblique image gives oblique boxes, not axis-aligned hulls
            rotation = numpy_from_vtk_matrix(roi.GetObjectToNodeMatrix())[:3, :3]
            assert np.abs(rotation).max(axis=0).min() < 0.99


def test_ras_volume_matches_reference_boxes(mrml, small_abdomen_ct, data_dir):
    """The RAS abdomen CT with its published per-organ boxes (voxel-centre extremes in world RAS)."""
    volume = mrml.load_volume(small_abdomen_ct)
    reference = json.loads((data_dir / "ts_example_ct_sm_3mm" / "boxes.json").read_text(encoding="utf-8"))
    organs = ["spleen", "kidney_right", "liver", "stomach"]
    result = label_derived_result(
        small_abdomen_ct, data_dir / "ts_example_ct_sm_3mm" / "label.nii.gz", _class_list(reference, organs)
    )
    result.detections = [detection for detection in result.detections if detection.label in organs]
    spacing = np.array(volume.GetSpacing())
    rois = create_rois(mrml.scene, volume, result)
    assert sorted(roi_label(roi) for roi in rois) == sorted(organs)
    for roi in rois:
        entry = reference[roi_label(roi)]
        corners = roi_world_corners(roi)
        np.testing.assert_allclose(corners.min(0), np.array(entry["world_min_ras_mm"]) - spacing / 2, atol=0.01)
        np.testing.assert_allclose(corners.max(0), np.array(entry["world_max_ras_mm"]) + spacing / 2, atol=0.01)


def _class_list(reference: dict, organs: list[str]) -> list[str]:
    """A class list where each organ's position is its label value (class_id = label value)."""
    highest = max(reference[organ]["id"] for organ in organs)
    names = [f"unused_{value}" for value in range(1, highest + 1)]
    for organ in organs:
        names[reference[organ]["id"] - 1] = organ
    return names


@pytest.mark.parametrize("variant", ["oblique", "LAS"])
def test_result_round_trip_is_exact_and_edited_bounds_match_backend(mrml, head_neck_case, tmp_path, variant):
    ct_path, label_path = _variant_files(head_neck_case, tmp_path, variant)
    volume = mrml.load_volume(ct_path)
    result = label_derived_result(ct_path, label_path, OPENKBP_CLASSES)
    rois = create_rois(mrml.scene, volume, result)

    assert rois_to_result(mrml.scene, volume) == result

    # Move one box by a few millimetres: the export reports the ROI's geometry as an edited box, and its voxel
    # bounds (the backend's conversion applied to the result's grid) are those of the CT file itself.
    center = np.array(rois[2].GetCenter()) + np.array([4.0, -3.0, 2.5])
    rois[2].SetCenter(*center)
    edited = rois_to_result(mrml.scene, volume).detections[2]
    assert edited.source == "edited"
    np.testing.assert_allclose(edited.box.center, roi_box(rois[2], volume).center)
    assert edited.voxel_bounds == physical_box_to_voxel_bounds(edited.box, sitk.ReadImage(str(ct_path)))
    # Slicer's reader flips the slice axis of the left-handed LAS file; its voxels are still the file's voxels.
    assert not grid_differences(volume_geometry(volume), VolumeGeometry.from_image_info(result.image))
