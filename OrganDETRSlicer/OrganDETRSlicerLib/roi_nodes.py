"""DetectionResult <-> Markups ROI nodes, one per organ, with the backend's box geometry exactly.

Geometry: the backend's box is an oriented box in LPS (centre, full edge lengths, rotation whose columns are the box
axes). A ROI node stores the same box in its node coordinates (RAS) as ``ObjectToNodeMatrix`` (rotation + centre)
plus ``Size``. The ROIs share the input volume's parent transform, so the box lives in the volume's own node
coordinates exactly as the backend computed it from the volume's voxels, and moving the volume moves its boxes.

Everything the schema needs and the geometry does not carry (label, class id, score, source, voxel bounds,
candidates) is kept as node attributes, so ROI nodes -> DetectionResult reproduces the result exactly and survives
a scene save/reload.
"""

from __future__ import annotations

import json

import numpy as np
import slicer

from organdetr_client.box_geometry import (
    box_corners,
    lps_to_ras,
    orientation_lps_to_ras,
    orientation_ras_to_lps,
    physical_box_to_voxel_bounds,
    ras_to_lps,
)
from organdetr_client.errors import UserInputError
from organdetr_client.image_geometry import index_to_physical_matrix
from organdetr_client.organ_terminology import organ_term
from organdetr_client.schema import Detection, DetectionResult, ImageInfo, PhysicalBox, VoxelBounds

from .scene_nodes import place_under, remove_node
from .volume_geometry import VolumeGeometry, numpy_from_vtk_matrix, volume_geometry, vtk_from_numpy_matrix

VOLUME_REFERENCE_ROLE = "organdetrInputVolume"
ATTRIBUTE_PREFIX = "OrganDETR."
RESULT_HEADER_ATTRIBUTE = ATTRIBUTE_PREFIX + "ResultHeader"  # on the volume: result without detections
LABEL, CLASS_ID, SCORE, SOURCE = "Label", "ClassId", "Score", "Source"
VOXEL_BOUNDS, CANDIDATES, MODEL_BOX, TERMINOLOGY = "VoxelBounds", "Candidates", "ModelBox", "Terminology"
PRESENCE, PRESENT = "Presence", "Present"
MANUAL_SCORE = 1.0  # a box an annotator drew is certain by definition
DEFAULT_FILL_OPACITY = 0.1  # see the CT through the box
GEOMETRY_TOLERANCE_MM = 1e-3  # smaller differences are float rounding of the ROI, not edits


def _get(node, key: str) -> str | None:
    return node.GetAttribute(ATTRIBUTE_PREFIX + key)


def _set(node, key: str, value: str) -> None:
    node.SetAttribute(ATTRIBUTE_PREFIX + key, value)


def is_organdetr_roi(node) -> bool:
    return node is not None and node.IsA("vtkMRMLMarkupsROINode") and _get(node, LABEL) is not None


def organdetr_rois(scene, volume_node=None) -> list:
    """Our ROI nodes in scene order, optionally only those of one input volume."""
    rois = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLMarkupsROINode")
        if not is_organdetr_roi(node):
            continue
        if volume_node is None or node.GetNodeReferenceID(VOLUME_REFERENCE_ROLE) == volume_node.GetID():
            rois.append(node)
    return rois


# --- geometry -------------------------------------------------------------------------------------------------


def set_roi_box(roi, box: PhysicalBox) -> None:
    """Place a ROI (node coordinates) exactly on an LPS physical box."""
    matrix = np.eye(4)
    matrix[:3, :3] = orientation_lps_to_ras(box.orientation)
    matrix[:3, 3] = lps_to_ras(box.center)
    was_modifying = roi.StartModify()
    roi.GetObjectToNodeMatrix().DeepCopy(vtk_from_numpy_matrix(matrix))
    roi.SetSize(*box.size)
    roi.EndModify(was_modifying)


def _roi_to_volume_node_matrix(roi, volume_node) -> np.ndarray:
    """4x4 from the ROI's node coordinates to the volume's node coordinates (identity when they share a parent)."""
    roi_parent, volume_parent = roi.GetParentTransformNode(), volume_node.GetParentTransformNode()
    if roi_parent is volume_parent:
        return np.eye(4)
    for parent in (roi_parent, volume_parent):
        if parent is not None and not parent.IsTransformToWorldLinear():
            raise UserInputError(f"box '{roi.GetName()}' and its volume are related by a non-linear transform")
    import vtk  # local: only this rare path needs a scratch matrix

    between = vtk.vtkMatrix4x4()
    slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(roi_parent, volume_parent, between)
    return numpy_from_vtk_matrix(between)


def roi_box(roi, volume_node) -> PhysicalBox:
    """The ROI's box in LPS, in the volume's node coordinates (the backend's frame)."""
    object_to_volume = _roi_to_volume_node_matrix(roi, volume_node) @ numpy_from_vtk_matrix(roi.GetObjectToNodeMatrix())
    size = roi.GetSize()
    return PhysicalBox(
        center=tuple(float(v) for v in ras_to_lps(object_to_volume[:3, 3])),
        size=tuple(float(v) for v in size),
        orientation=[float(v) for v in orientation_ras_to_lps(object_to_volume[:3, :3]).ravel()],
    )


# --- nodes <-> detections -------------------------------------------------------------------------------------


def _new_roi(scene, volume_node, detection: Detection, model_box: PhysicalBox | None):
    term = organ_term(detection.label)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", scene.GenerateUniqueName(detection.label))
    roi.CreateDefaultDisplayNodes()
    display = roi.GetDisplayNode()
    display.SetSelectedColor(term.colour)
    display.SetColor(term.colour)
    display.SetFillOpacity(DEFAULT_FILL_OPACITY)
    roi.SetNodeReferenceID(VOLUME_REFERENCE_ROLE, volume_node.GetID())
    roi.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    _set(roi, LABEL, detection.label)
    _set(roi, CLASS_ID, str(detection.class_id))
    _set(roi, SCORE, repr(float(detection.score)))
    _set(roi, SOURCE, detection.source)
    _set(roi, PRESENCE, "" if detection.presence is None else repr(float(detection.presence)))
    _set(roi, PRESENT, "true" if detection.present else "false")
    _set(roi, VOXEL_BOUNDS, detection.voxel_bounds.model_dump_json() if detection.voxel_bounds else "")
    _set(roi, CANDIDATES, json.dumps([candidate.model_dump(mode="json") for candidate in detection.candidates]))
    _set(roi, MODEL_BOX, model_box.model_dump_json() if model_box else "")
    _set(roi, TERMINOLOGY, term.terminology_entry())
    roi.SetDescription(f"{term.display_name}; score {detection.score:.3f}; source {detection.source}")
    set_roi_box(roi, detection.box)
    place_under(scene, roi, volume_node)
    return roi


def remove_rois(scene, volume_node) -> int:
    """Remove the volume's OrganDETR boxes; returns how many."""
    rois = organdetr_rois(scene, volume_node)
    for roi in rois:
        remove_node(scene, roi)
    return len(rois)


def create_rois(scene, volume_node, result: DetectionResult, replace: bool = True) -> list:
    """One ROI per detection under the volume; the result header is kept on the volume for the way back."""
    if replace:
        remove_rois(scene, volume_node)
    header = result.model_dump(mode="json", exclude={"detections"})
    volume_node.SetAttribute(RESULT_HEADER_ATTRIBUTE, json.dumps(header))
    return [
        _new_roi(scene, volume_node, detection, detection.box if detection.source != "manual" else None)
        for detection in result.detections
    ]


def add_manual_roi(scene, volume_node, label: str, class_id: int, box: PhysicalBox | None = None):
    """A box the annotator adds for a missed organ: aligned with the volume grid, by default a quarter of the volume
    in its centre (the annotator then drags the handles)."""
    geometry = volume_geometry(volume_node)
    if box is None:
        centre_index = (np.array(geometry.shape, dtype=np.float64) - 1.0) / 2.0
        box = PhysicalBox(
            center=tuple(float(v) for v in (index_to_physical_matrix(geometry) @ np.append(centre_index, 1.0))[:3]),
            size=tuple(float(v) for v in np.array(geometry.shape) * np.array(geometry.spacing) / 4.0),
            orientation=list(geometry.direction),
        )
    detection = Detection(label=label, class_id=class_id, score=MANUAL_SCORE, box=box, source="manual")
    return _new_roi(scene, volume_node, detection, None)


def roi_source(roi) -> str:
    return _get(roi, SOURCE) or "manual"


def set_roi_source(roi, source: str) -> None:
    _set(roi, SOURCE, source)
    description = roi.GetDescription() or ""
    roi.SetDescription(description.rsplit("; source ", 1)[0] + f"; source {source}")


def roi_score(roi) -> float:
    return float(_get(roi, SCORE) or MANUAL_SCORE)


def roi_presence(roi) -> float | None:
    """The model's probability that the organ is in the scan (None for results before schema 1.1)."""
    text = _get(roi, PRESENCE)
    return float(text) if text else None


def roi_present(roi) -> bool:
    """False for a box of an organ the model judged absent (returned only when absent organs were asked for)."""
    return _get(roi, PRESENT) != "false"


def absent_organs(scene, volume_node) -> list[str]:
    """Organs the volume's result says are not in the scan: its ``absent`` list and boxes with present=false."""
    header_text = volume_node.GetAttribute(RESULT_HEADER_ATTRIBUTE) if volume_node is not None else None
    listed = [organ["label"] for organ in json.loads(header_text).get("absent", [])] if header_text else []
    boxed = [roi_label(roi) for roi in organdetr_rois(scene, volume_node) if not roi_present(roi)]
    return listed + [label for label in boxed if label not in listed]


def roi_label(roi) -> str:
    return _get(roi, LABEL) or roi.GetName()


def roi_model_box(roi) -> PhysicalBox | None:
    """The box the ROI was created with: the model's (or an imported edited box); None for manual boxes."""
    text = _get(roi, MODEL_BOX)
    return PhysicalBox.model_validate_json(text) if text else None


def box_changed(roi, volume_node) -> bool:
    """Whether the ROI's geometry differs from the box the model proposed (always True for manual boxes)."""
    model_box = roi_model_box(roi)
    if model_box is None:
        return True
    current = roi_box(roi, volume_node)
    axes = [np.array(b.orientation).reshape(3, 3) * np.array(b.size) for b in (current, model_box)]
    return not (
        np.allclose(current.center, model_box.center, rtol=0, atol=GEOMETRY_TOLERANCE_MM)
        and np.allclose(axes[0], axes[1], rtol=0, atol=GEOMETRY_TOLERANCE_MM)
    )


def roi_to_detection(roi, volume_node, geometry: VolumeGeometry | None = None) -> Detection:
    """The ROI as a schema Detection.

    An unchanged box is reported with the exact numbers it was created from (the ROI keeps its control point in
    single precision); a changed one with the ROI's geometry, marked "edited" even if the change was not observed,
    and with voxel bounds recomputed.
    """
    source = roi_source(roi)
    model_box = roi_model_box(roi)
    if source != "manual" and model_box is not None and not box_changed(roi, volume_node):
        stored = _get(roi, VOXEL_BOUNDS)
        box = model_box
        voxel_bounds = VoxelBounds.model_validate_json(stored) if stored else None
    else:
        box = roi_box(roi, volume_node)
        source = "manual" if source == "manual" else "edited"
        voxel_bounds = physical_box_to_voxel_bounds(box, geometry or volume_geometry(volume_node))
    return Detection(
        label=roi_label(roi),
        class_id=int(_get(roi, CLASS_ID) or 1),
        score=roi_score(roi),
        presence=roi_presence(roi),
        present=roi_present(roi),
        box=box,
        voxel_bounds=voxel_bounds,
        source=source,
        candidates=json.loads(_get(roi, CANDIDATES) or "[]"),
    )


def rois_to_result(scene, volume_node) -> DetectionResult:
    """The volume's current boxes (model, edited, manual) as a DetectionResult with the original header."""
    header_text = volume_node.GetAttribute(RESULT_HEADER_ATTRIBUTE)
    if not header_text:
        raise UserInputError(f"volume '{volume_node.GetName()}' has no OrganDETR result to export; run detection first")
    header = json.loads(header_text)
    # Voxel bounds refer to the result's image (the file the backend read), whose index order can differ from
    # Slicer's for the same voxels.
    geometry = VolumeGeometry.from_image_info(ImageInfo.model_validate(header["image"]))
    detections = [roi_to_detection(roi, volume_node, geometry) for roi in organdetr_rois(scene, volume_node)]
    return DetectionResult.model_validate({**header, "detections": detections})


# --- display --------------------------------------------------------------------------------------------------


def apply_score_threshold(scene, volume_node, threshold: float) -> int:
    """Hide model boxes scoring below the threshold and boxes of organs judged absent (edited and manual boxes stay
    visible); returns how many show."""
    shown = 0
    for roi in organdetr_rois(scene, volume_node):
        model_box = roi_source(roi) == "model"
        visible = not model_box or (roi_present(roi) and roi_score(roi) >= threshold)
        roi.GetDisplayNode().SetVisibility(visible)
        shown += int(visible)
    return shown


def set_rois_locked(scene, volume_node, locked: bool) -> None:
    """Lock boxes against accidental edits (no handles) or unlock them for correction."""
    for roi in organdetr_rois(scene, volume_node):
        roi.SetLocked(locked)
        roi.GetDisplayNode().SetHandlesInteractive(not locked)


def roi_world_corners(roi) -> np.ndarray:
    """The 8 corners of the box in world RAS (parent transforms applied), for display and checks."""
    object_to_world = numpy_from_vtk_matrix(roi.GetObjectToWorldMatrix())
    return box_corners(object_to_world[:3, 3], roi.GetSize(), object_to_world[:3, :3])
