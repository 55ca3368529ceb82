"""Detection over several volumes of the scene in one go, with progress and cancel, one volume's error not
stopping the others."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from organdetr.errors import UserInputError

from .backend_client import BackendClient, BackendError, JobStatus
from .detection_run import DetectionOptions, DetectionRun

# on_progress(volume index, number of volumes, volume name, fraction of this volume done, stage)
BatchProgress = Callable[[int, int, str, float, str], None]


def scalar_volumes(scene) -> list:
    """Every scalar (not label map) volume with image data, in scene order."""
    volumes = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        if not node.IsA("vtkMRMLLabelMapVolumeNode") and node.GetImageData() is not None:
            volumes.append(node)
    return volumes


@dataclass
class BatchReport:
    boxes: dict[str, int] = field(default_factory=dict)  # volume name -> number of boxes
    errors: dict[str, str] = field(default_factory=dict)  # volume name -> plain-words error
    cancelled: bool = False


def run_batch(
    scene,
    client: BackendClient,
    volumes: list | None = None,
    options: DetectionOptions | None = None,
    on_progress: BatchProgress | None = None,
    should_cancel: Callable[[], bool] = lambda: False,
) -> BatchReport:
    """Detect organs in each volume (all scalar volumes by default) one after the other."""
    volumes = scalar_volumes(scene) if volumes is None else volumes
    report = BatchReport()
    for index, volume in enumerate(volumes):
        name = volume.GetName()

        def forward(status: JobStatus, index=index, name=name) -> None:
            if on_progress is not None:
                on_progress(index, len(volumes), name, status.progress, status.stage)

        try:
            rois = DetectionRun(scene, volume, client, options).run_to_end(forward, should_cancel)
        except (BackendError, UserInputError) as error:
            report.errors[name] = str(error)
            continue
        if rois is None:
            report.cancelled = True
            break
        report.boxes[name] = len(rois)
    return report
