"""Detection over several volumes of the scene, one after the other, with the single-volume task's non-blocking
steps, progress and cancel; one volume's error does not stop the others."""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass, field

from organdetr_client.errors import UserInputError

from .detection_run import CANCELLED, DONE, FAILED, Connector, DetectionOptions, DetectionTask, Progress


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

    def lines(self) -> list[str]:
        """One line per volume, for a message box."""
        return [f"{name}: {count} organs" for name, count in self.boxes.items()] + [
            f"{name}: {error}" for name, error in self.errors.items()
        ]


class BatchTask:
    """Detect organs in each volume in turn: ``advance()`` until ``progress.ended``; ``report`` says how it went."""

    def __init__(
        self, scene, volumes: list, connect: Connector, worker: Executor, options: DetectionOptions | None = None
    ) -> None:
        self.scene = scene
        self.volumes = list(volumes)
        self.report = BatchReport()
        self._connect = connect
        self._worker = worker
        self._options = options
        self._index = -1
        self._task: DetectionTask | None = None
        self.progress = Progress("running", 0.0, "Starting")
        self._next_volume()

    @property
    def ended(self) -> bool:
        return self.progress.ended

    @property
    def health(self) -> dict | None:
        return self._task.health if self._task is not None else None

    def _next_volume(self) -> None:
        self._index += 1
        self._task = None
        while self._index < len(self.volumes):
            volume = self.volumes[self._index]
            try:
                self._task = DetectionTask(self.scene, volume, self._connect, self._worker, self._options)
                return
            except UserInputError as error:  # e.g. a volume of an unsupported voxel type
                self.report.errors[volume.GetName()] = str(error)
                self._index += 1
        words = "; ".join(self.report.lines()) or "No volumes."
        self.progress = Progress(DONE, 1.0, words)

    def advance(self) -> Progress:
        if self.ended or self._task is None:
            return self.progress
        step = self._task.advance()
        name = self.volumes[self._index].GetName()
        if step.state == DONE:
            self.report.boxes[name] = len(self._task.rois)
        elif step.state == FAILED:
            self.report.errors[name] = step.words
        if step.ended:
            self._next_volume()
            return self.progress
        total = len(self.volumes)
        fraction = (self._index + step.fraction) / total
        self.progress = Progress(step.state, fraction, f"{name} ({self._index + 1}/{total}): {step.words}")
        return self.progress

    def cancel(self) -> None:
        if self.ended:
            return
        if self._task is not None:
            self._task.cancel()
        self.report.cancelled = True
        self.progress = Progress(CANCELLED, self.progress.fraction, "Cancelled.")
