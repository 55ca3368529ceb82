"""Fixtures for the Slicer module's library: a real MRML scene (slicer-core) with the logics segmentations and
markups need, real CT volumes loaded through MRML's own reader, and detection results built from label maps."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="slicer-core is needed for the Slicer module tests")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package is not slicer-core", allow_module_level=True)

MODULE_DIR = Path(__file__).resolve().parents[2] / "OrganDETRSlicer"
sys.path.insert(0, str(MODULE_DIR))

from organdetr_client.box_geometry import voxel_bounds_to_physical  # noqa: E402
from organdetr_client.schema import Detection, DetectionResult, ImageInfo, ModelInfo, VoxelBounds  # noqa: E402

OPENKBP_CLASSES = ["Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible"]


class SlicerScene:
    """A scene with application, colour, segmentations and markups logics, as Slicer sets them up."""

    def __init__(self) -> None:
        self.scene = slicer.vtkMRMLScene()
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(self.scene)
        self.logics = []
        for logic_class in (
            slicer.vtkSlicerColorLogic,
            slicer.vtkSlicerSegmentationsModuleLogic,
            slicer.vtkSlicerMarkupsLogic,
        ):
            logic = logic_class()
            logic.SetMRMLApplicationLogic(self.app_logic)
            logic.SetMRMLScene(self.scene)
            self.logics.append(logic)

    def load_volume(self, path: Path, name: str = "CT", labelmap: bool = False):
        node_class = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
        node = self.scene.AddNewNodeByClass(node_class, name)
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        assert storage.ReadData(node), f"MRML could not read {path}"
        return node


@pytest.fixture
def mrml() -> SlicerScene:
    return SlicerScene()


def label_derived_result(image_path: Path, label_path: Path, class_names: list[str]) -> DetectionResult:
    """A DetectionResult whose boxes are the organs' label-map bounding boxes (the ideal detector's output), built
    with the backend's own geometry (organdetr_backend.geometry), as the backend would send it."""
    image = sitk.ReadImage(str(image_path))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path))).transpose(2, 1, 0)
    detections = []
    for class_id, name in enumerate(class_names, start=1):
        where = np.argwhere(labels == class_id)
        if len(where) == 0:
            continue
        bounds = VoxelBounds(min_ijk=tuple(where.min(0).tolist()), max_ijk_inclusive=tuple(where.max(0).tolist()))
        box = voxel_bounds_to_physical(bounds, image)
        detections.append(
            Detection(label=name, class_id=class_id, score=0.5 + 0.05 * class_id, box=box, voxel_bounds=bounds)
        )
    return DetectionResult(
        image=ImageInfo(
            source=image_path.name,
            shape=image.GetSize(),
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=list(image.GetDirection()),
            sha256="0" * 64,
        ),
        model=ModelInfo(name="label-derived", version="0", weights_sha256="0" * 64, classes=class_names),
        device="cpu",
        detections=detections,
    )
