"""One detection job for one volume, driven by polling so the GUI never waits on the network.

``start`` writes the volume (its node coordinates: a parent transform is not hardened, the boxes get the same
transform) to a temporary NRRD and submits it; ``poll`` asks for progress; ``finish`` turns the result into ROIs
(and the optional segmentation preview); ``cancel`` stops the backend job. The temporary files are always removed.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import slicer
from organdetr.errors import UserInputError

from .backend_client import BackendClient, BackendError, JobStatus, failed_job_message
from .results_io import check_result_matches_volume
from .roi_nodes import apply_score_threshold, create_rois
from .segmentation_preview import load_segmentation_preview

DEFAULT_POLL_INTERVAL_S = 0.5


@dataclass
class DetectionOptions:
    top_k: int = 3  # alternative boxes kept per organ for annotators
    segmentation: bool = False  # also fetch the backend's segmentation preview
    score_threshold: float = 0.0  # model boxes below this are hidden (not deleted)


def write_volume_nrrd(volume_node, path: Path) -> Path:
    """Write a scalar volume as NRRD with its own geometry (what the backend computes boxes against)."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)  # local upload: speed over size
    if not storage.WriteData(volume_node):
        raise UserInputError(f"cannot write volume '{volume_node.GetName()}' for the backend")
    return path


class DetectionRun:
    """Detect organs in ``volume_node`` with the backend behind ``client``."""

    def __init__(self, scene, volume_node, client: BackendClient, options: DetectionOptions | None = None) -> None:
        self.scene = scene
        self.volume_node = volume_node
        self.client = client
        self.options = options or DetectionOptions()
        self.job_id: str | None = None
        self.status: JobStatus | None = None
        self._folder: Path | None = None

    def start(self) -> str:
        if self.volume_node is None or self.volume_node.GetImageData() is None:
            raise UserInputError("select an input volume with image data first")
        self._folder = Path(tempfile.mkdtemp(prefix="organdetr-upload-"))
        try:
            image = write_volume_nrrd(self.volume_node, self._folder / "volume.nrrd")
            self.job_id = self.client.submit(image, self.options.top_k, self.options.segmentation)
        except BaseException:
            self.cleanup()
            raise
        return self.job_id

    def poll(self) -> JobStatus:
        self.status = self.client.job(self._require_job())
        if self.status.status == "failed":
            self.cleanup()
            raise BackendError(failed_job_message(self.status))
        return self.status

    def finish(self) -> list:
        """Fetch the finished result and build its nodes; returns the ROI nodes."""
        job_id = self._require_job()
        try:
            result = self.client.result(job_id)
            check_result_matches_volume(result, self.volume_node, "the backend's result")
            segmentation_file = None
            if self.options.segmentation:
                segmentation_file = self._folder / "segmentation.nrrd"
                segmentation_file.write_bytes(self.client.segmentation(job_id))
            rois = create_rois(self.scene, self.volume_node, result, replace=True)
            apply_score_threshold(self.scene, self.volume_node, self.options.score_threshold)
            if segmentation_file is not None:
                load_segmentation_preview(self.scene, self.volume_node, segmentation_file, result.model.classes)
            return rois
        finally:
            self.cleanup()

    def cancel(self) -> None:
        try:
            if self.job_id is not None:
                self.client.cancel(self.job_id)
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def _require_job(self) -> str:
        if self.job_id is None:
            raise RuntimeError("the detection run has not been started")
        return self.job_id

    def run_to_end(
        self,
        on_progress: Callable[[JobStatus], None] | None = None,
        should_cancel: Callable[[], bool] = lambda: False,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
    ) -> list | None:
        """Blocking convenience for scripts and batch: start, poll until finished, finish. None when cancelled."""
        self.start()
        while True:
            if should_cancel():
                self.cancel()
                return None
            status = self.poll()
            if on_progress is not None:
                on_progress(status)
            if status.status == "done":
                return self.finish()
            if status.status == "cancelled":
                self.cleanup()
                return None
            time.sleep(poll_interval_s)
