"""The backend's segmentation preview (an NRRD label map, label value = class id) as a segmentation node.

Segments get the organ names, anatomy colours and terminology of the boxes, are shown semi-transparent, and the
node sits under the input volume (same parent transform) so it can be removed with one call.
"""

from __future__ import annotations

from pathlib import Path

import slicer

from organdetr_client.errors import UserInputError
from organdetr_client.organ_terminology import organ_term

from .scene_nodes import place_under, remove_node

PREVIEW_REFERENCE_ROLE = "organdetrPreviewOf"
PREVIEW_OPACITY = 0.4  # the CT stays readable under the preview


def _read_labelmap(scene, path: Path):
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "OrganDETR preview labels")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(labelmap):
        remove_node(scene, labelmap)
        raise UserInputError(f"{path.name}: cannot read the segmentation preview")
    return labelmap


def segmentation_previews(scene, volume_node) -> list:
    nodes = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLSegmentationNode")
        if node.GetNodeReferenceID(PREVIEW_REFERENCE_ROLE) == volume_node.GetID():
            nodes.append(node)
    return nodes


def remove_segmentation_preview(scene, volume_node) -> int:
    """Remove the volume's preview segmentations; returns how many."""
    previews = segmentation_previews(scene, volume_node)
    for node in previews:
        remove_node(scene, node)
    return len(previews)


def load_segmentation_preview(scene, volume_node, path: str | Path, class_names: list[str]):
    """Import a preview label map (values 1..K = ``class_names``) as a segmentation replacing any previous one."""
    path = Path(path)
    labelmap = _read_labelmap(scene, path)
    segmentation = None
    try:
        segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volume_node.GetName()} OrganDETR preview")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation):
            raise UserInputError(f"{path.name}: the segmentation preview could not be converted to segments")
        _name_segments(segmentation, class_names, path.name)
    except BaseException:
        if segmentation is not None:
            remove_node(scene, segmentation)
        raise
    finally:
        remove_node(scene, labelmap)
    remove_segmentation_preview(scene, volume_node)
    segmentation.SetNodeReferenceID(PREVIEW_REFERENCE_ROLE, volume_node.GetID())
    segmentation.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    display = segmentation.GetDisplayNode()
    display.SetOpacity(PREVIEW_OPACITY)
    place_under(scene, segmentation, volume_node)
    return segmentation


def _name_segments(segmentation, class_names: list[str], file_name: str) -> None:
    contents = segmentation.GetSegmentation()
    for segment_id in list(contents.GetSegmentIDs()):
        segment = contents.GetSegment(segment_id)
        label_value = segment.GetLabelValue()
        if not 1 <= label_value <= len(class_names):
            raise UserInputError(f"{file_name}: label value {label_value} is not one of the model's {len(class_names)}")
        name = class_names[label_value - 1]
        term = organ_term(name)
        segment.SetName(name)
        segment.SetColor(term.colour)
        if term.type_code is not None:
            segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), term.terminology_entry())
