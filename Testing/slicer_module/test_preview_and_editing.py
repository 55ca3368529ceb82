"""Segmentation preview import (named and coloured by organ terminology), edited-flag tracking and manual boxes."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from conftest import OPENKBP_CLASSES, label_derived_result
from organdetr_client.errors import UserInputError
from organdetr_client.organ_terminology import organ_term
from OrganDETRSlicerLib.edit_tracking import EditTracker
from OrganDETRSlicerLib.roi_nodes import add_manual_roi, create_rois, roi_source, rois_to_result, set_rois_locked
from OrganDETRSlicerLib.segmentation_preview import load_segmentation_preview, remove_segmentation_preview
from vtk.util.numpy_support import vtk_to_numpy


def test_segmentation_preview_names_colours_and_voxels(mrml, head_neck_case, tmp_path):
    volume = mrml.load_volume(head_neck_case[0])
    label_image = sitk.ReadImage(str(head_neck_case[1]))
    sitk.WriteImage(sitk.Cast(label_image, sitk.sitkUInt8), str(tmp_path / "preview.nrrd"))  # as the server sends
    expected_counts = np.bincount(sitk.GetArrayFromImage(label_image).ravel(), minlength=8)[1:]
    nodes_before = mrml.scene.GetNumberOfNodes()

    segmentation = load_segmentation_preview(mrml.scene, volume, tmp_path / "preview.nrrd", OPENKBP_CLASSES)

    contents = segmentation.GetSegmentation()
    segments = [contents.GetNthSegment(index) for index in range(contents.GetNumberOfSegments())]
    assert [segment.GetName() for segment in segments] == OPENKBP_CLASSES
    for segment, name, expected in zip(segments, OPENKBP_CLASSES, expected_counts, strict=True):
        np.testing.assert_allclose(segment.GetColor(), organ_term(name).colour)
        labelmap = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
        voxels = vtk_to_numpy(labelmap.GetPointData().GetScalars())
        assert int(np.count_nonzero(voxels == segment.GetLabelValue())) == expected
    assert segmentation.GetDisplayNode().GetOpacity() < 1.0
    assert remove_segmentation_preview(mrml.scene, volume) == 1
    assert mrml.scene.GetNumberOfNodes() == nodes_before


def test_unreadable_preview_changes_nothing(mrml, head_neck_case, tmp_path):
    volume = mrml.load_volume(head_neck_case[0])
    (tmp_path / "bad.nrrd").write_bytes(b"not an image")
    before = mrml.scene.GetNumberOfNodes()
    with pytest.raises(UserInputError, match="cannot read"):
        load_segmentation_preview(mrml.scene, volume, tmp_path / "bad.nrrd", OPENKBP_CLASSES)
    assert mrml.scene.GetNumberOfNodes() == before


def test_end_of_interaction_marks_edited(mrml, head_neck_case):
    volume = mrml.load_volume(head_neck_case[0])
    rois = create_rois(mrml.scene, volume, label_derived_result(*head_neck_case, OPENKBP_CLASSES))
    changed = []
    tracker = EditTracker(volume, on_change=changed.append)
    tracker.track_all(rois)
    end = slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent

    rois[1].InvokeEvent(end)  # a click that moved nothing
    assert roi_source(rois[1]) == "model" and not changed

    original_size = rois[1].GetSize()
    rois[1].InvokeEvent(slicer.vtkMRMLMarkupsNode.PointStartInteractionEvent)
    rois[1].SetSize(*(np.array(original_size) * 1.2))
    assert roi_source(rois[1]) == "model"  # only the end of an interaction counts
    rois[1].InvokeEvent(end)
    assert roi_source(rois[1]) == "edited" and changed == [rois[1]]

    assert tracker.undo_last_edit() is rois[1]  # Ctrl+Z
    assert rois[1].GetSize() == original_size and roi_source(rois[1]) == "model"
    rois[1].InvokeEvent(slicer.vtkMRMLMarkupsNode.PointStartInteractionEvent)
    rois[1].SetSize(*(np.array(original_size) * 1.2))
    rois[1].InvokeEvent(end)

    manual = add_manual_roi(mrml.scene, volume, "Larynx", 6)
    tracker.track(manual)
    manual.SetCenter(0.0, 0.0, 0.0)
    manual.InvokeEvent(end)
    assert roi_source(manual) == "manual"
    sources = [d.source for d in rois_to_result(mrml.scene, volume).detections]
    assert sources == ["model", "edited", *["model"] * 5, "manual"]

    set_rois_locked(mrml.scene, volume, True)
    assert all(roi.GetLocked() and not roi.GetDisplayNode().GetHandlesInteractive() for roi in rois)
    tracker.untrack_all()
    rois[2].SetCenter(1.0, 2.0, 3.0)
    rois[2].InvokeEvent(end)
    assert roi_source(rois[2]) == "model"  # no longer observed (the export still reports it as edited)
