"""Export (our JSON, .mrk.json, CSV) and import of boxes; refused imports leave the scene exactly as it was."""

from __future__ import annotations

import csv
import json

import jsonschema
import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from conftest import OPENKBP_CLASSES, label_derived_result
from organdetr_client.errors import UserInputError
from organdetr_client.export import read_result_json, write_result_json
from OrganDETRSlicerLib.edit_tracking import EditTracker
from OrganDETRSlicerLib.results_io import export_boxes, import_boxes
from OrganDETRSlicerLib.roi_nodes import (
    add_manual_roi,
    apply_score_threshold,
    create_rois,
    organdetr_rois,
    roi_source,
    rois_to_result,
)


@pytest.fixture
def detected(mrml, head_neck_case):
    """The head-and-neck CT in the scene with its label-derived boxes."""
    volume = mrml.load_volume(head_neck_case[0])
    result = label_derived_result(*head_neck_case, OPENKBP_CLASSES)
    rois = create_rois(mrml.scene, volume, result)
    return mrml, volume, result, rois


def _scene_snapshot(scene) -> list:
    """Every node's id, class, name, attributes and (for ROIs) geometry: what a refused import must not change."""
    snapshot = []
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        attributes = {name: node.GetAttribute(name) for name in node.GetAttributeNames() or ()}
        geometry = None
        if node.IsA("vtkMRMLMarkupsROINode"):
            geometry = (tuple(node.GetCenter()), tuple(node.GetSize()))
        snapshot.append((node.GetID(), node.GetClassName(), node.GetName(), attributes, geometry))
    return snapshot


def test_exports_and_reimport(detected, tmp_path):
    mrml, volume, result, rois = detected
    tracker = EditTracker(volume)
    tracker.track_all(rois)
    rois[0].SetCenter(*(np.array(rois[0].GetCenter()) + 5.0))
    rois[0].InvokeEvent(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)
    add_manual_roi(mrml.scene, volume, "Larynx", OPENKBP_CLASSES.index("Larynx") + 1)

    written = export_boxes(mrml.scene, volume, tmp_path / "boxes.json")
    exported = read_result_json(written)
    assert [d.source for d in exported.detections] == ["edited"] + ["model"] * 6 + ["manual"]
    assert exported.image == result.image
    assert exported.detections[1:7] == result.detections[1:7]

    # Never overwrite silently: a second export to the same name is refused and the file is unchanged.
    before = written.read_bytes()
    with pytest.raises(UserInputError, match="already exists"):
        export_boxes(mrml.scene, volume, written)
    assert written.read_bytes() == before

    rows = list(
        csv.DictReader((export_boxes(mrml.scene, volume, tmp_path / "boxes.csv")).open(encoding="utf-8", newline=""))
    )
    assert [row["organ"] for row in rows] == [d.label for d in exported.detections]
    assert rows[0]["source"] == "edited"

    # Re-import onto a fresh scene state: the same boxes with the same flags come back.
    for roi in organdetr_rois(mrml.scene, volume):
        mrml.scene.RemoveNode(roi)
    imported = import_boxes(mrml.scene, volume, written)
    assert len(imported) == 8
    assert [roi_source(roi) for roi in imported] == [d.source for d in exported.detections]
    assert rois_to_result(mrml.scene, volume) == exported


def _export_and_reload_markups(mrml, volume, tmp_path, data_dir):
    path = export_boxes(mrml.scene, volume, tmp_path / "boxes.mrk.json")
    document = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.validate(document, json.loads((data_dir / "markups-schema-v1.0.3.json").read_text(encoding="utf-8")))
    storage = slicer.vtkMRMLMarkupsROIJsonStorageNode()
    mrml.scene.AddNode(storage)
    return [storage.AddNewMarkupsNodeFromFile(str(path), "", index) for index in range(len(document["markups"]))]


def test_markups_json_validates_and_reloads(detected, tmp_path, data_dir):
    mrml, volume, result, rois = detected
    reloaded = _export_and_reload_markups(mrml, volume, tmp_path, data_dir)
    assert [node.GetName() for node in reloaded] == [d.label for d in result.detections]
    for node, roi in zip(reloaded, rois, strict=True):
        np.testing.assert_allclose(node.GetCenter(), roi.GetCenter(), atol=1e-4)
        # An exported box keeps the colour the module gave it.
        np.testing.assert_allclose(node.GetDisplayNode().GetColor(), roi.GetDisplayNode().GetColor(), atol=1e-6)


def test_markups_json_reload_keeps_box_size(detected, tmp_path, data_dir):
    mrml, volume, _, rois = detected
    reloaded = _export_and_reload_markups(mrml, volume, tmp_path, data_dir)
    for node, roi in zip(reloaded, rois, strict=True):
        np.testing.assert_allclose(node.GetSize(), roi.GetSize(), atol=1e-4)


def test_left_handed_file_result_imports_onto_slicer_volume(mrml, head_neck_case, tmp_path):
    """A result computed by the CLI on a left-handed (LAS) file is accepted on the same file loaded by Slicer,
    whose reader flips the slice axis: the voxels are the same."""
    for source, name in zip(head_neck_case, ("ct.nrrd", "label.nrrd"), strict=True):
        sitk.WriteImage(sitk.DICOMOrient(sitk.ReadImage(str(source)), "LAS"), str(tmp_path / name))
    volume = mrml.load_volume(tmp_path / "ct.nrrd")
    result = label_derived_result(tmp_path / "ct.nrrd", tmp_path / "label.nrrd", OPENKBP_CLASSES)
    write_result_json(result, tmp_path / "result.json")
    assert len(import_boxes(mrml.scene, volume, tmp_path / "result.json")) == len(OPENKBP_CLASSES)
    assert rois_to_result(mrml.scene, volume) == result


def _wrong_geometry(result, tmp_path):
    moved = result.model_copy(deep=True)
    moved.image.origin = (moved.image.origin[0] + 10.0, *moved.image.origin[1:])
    return write_result_json(moved, tmp_path / "moved.json")


def _wrong_schema(result, tmp_path):
    document = json.loads(result.model_dump_json())
    document["schema_version"] = "9.0"
    (tmp_path / "future.json").write_text(json.dumps(document), encoding="utf-8")
    return tmp_path / "future.json"


def _malformed(result, tmp_path):
    (tmp_path / "broken.json").write_text(result.model_dump_json()[:-40], encoding="utf-8")
    return tmp_path / "broken.json"


@pytest.mark.parametrize(
    ("make_file", "message"),
    [(_wrong_geometry, "different image"), (_wrong_schema, "schema"), (_malformed, "not valid JSON")],
)
def test_refused_import_leaves_scene_unchanged(detected, tmp_path, make_file, message):
    mrml, volume, result, _ = detected
    path = make_file(result, tmp_path)
    before = _scene_snapshot(mrml.scene)
    with pytest.raises(UserInputError, match=message):
        import_boxes(mrml.scene, volume, path)
    assert _scene_snapshot(mrml.scene) == before


def test_import_onto_other_volume_is_refused(detected, small_abdomen_ct, tmp_path):
    mrml, _, result, _ = detected
    other = mrml.load_volume(small_abdomen_ct, "abdomen")
    path = write_result_json(result, tmp_path / "result.json")
    before = _scene_snapshot(mrml.scene)
    with pytest.raises(UserInputError, match=r"abdomen.*size \(128, 128, 128\)"):
        import_boxes(mrml.scene, other, path)
    assert _scene_snapshot(mrml.scene) == before


def test_score_threshold_hides_low_model_boxes_only(detected):
    mrml, volume, result, rois = detected
    manual = add_manual_roi(mrml.scene, volume, "Mandible", 7)
    threshold = 0.72  # scores are 0.55 .. 0.85 by class id
    shown = apply_score_threshold(mrml.scene, volume, threshold)
    expected = [d.score >= threshold for d in result.detections]
    assert [roi.GetDisplayNode().GetVisibility() for roi in rois] == expected
    assert manual.GetDisplayNode().GetVisibility()
    assert shown == sum(expected) + 1
