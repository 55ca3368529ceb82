"""One detection for one volume, as steps that never block the calling (GUI) thread.

Every wait (starting the embedded backend, writing and uploading the volume, polling the job, downloading the
result) runs on the session's background worker; :meth:`DetectionTask.advance`, called by a timer, only looks at
whether the current step finished and starts the next one. The calling thread builds the ROIs (MRML) at the end.
:meth:`DetectionTask.cancel` works in every step: the upload stops at its next chunk, the backend job is cancelled,
and the temporary files are always removed.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path

from organdetr_client.errors import UserInputError
from organdetr_client.http_client import BackendClient, BackendError, DetectionRequest, JobStatus, failed_job_message

from .results_io import check_result_matches_volume
from .roi_nodes import apply_score_threshold, create_rois
from .segmentation_preview import load_segmentation_preview
from .volume_upload import VolumeSnapshot, snapshot, write_nrrd

DEFAULT_POLL_INTERVAL_S = 0.5
UPLOAD_FILE_NAME = "volume.nrrd"
SEGMENTATION_FILE_NAME = "segmentation.nrrd"

# Task states: the steps in order, then how the task ended.
CONNECTING, UPLOADING, RUNNING, FETCHING = "connecting", "uploading", "running", "fetching"
DONE, FAILED, CANCELLED = "done", "failed", "cancelled"
ENDED_STATES = (DONE, FAILED, CANCELLED)
_STEP_WORDS = {
    CONNECTING: "Connecting to the backend",
    UPLOADING: "Sending the volume",
    FETCHING: "Receiving the result",
}

# connect() runs on the worker and returns the client plus the backend's health answer (device, version).
Connector = Callable[[], tuple[BackendClient, dict]]


@dataclass(frozen=True)
class DetectionOptions:
    request: DetectionRequest = field(default_factory=DetectionRequest)
    score_threshold: float = 0.0  # model boxes below this are hidden (not deleted)


@dataclass(frozen=True)
class Progress:
    state: str
    fraction: float  # 0..1 of this task
    words: str  # what is going on, or how it ended

    @property
    def ended(self) -> bool:
        return self.state in ENDED_STATES


def _upload(client: BackendClient, volume: VolumeSnapshot, folder: Path, request, stop: threading.Event) -> str:
    """Worker: write the volume to the task's folder and submit it; the file is removed once sent."""
    path = write_nrrd(volume, folder / UPLOAD_FILE_NAME)
    try:
        return client.submit(path, request, should_stop=stop.is_set)
    finally:
        path.unlink(missing_ok=True)


def _fetch(client: BackendClient, job_id: str, folder: Path, segmentation: bool):
    """Worker: the parsed result and, if asked for, the preview label map saved in the task's folder."""
    result = client.result(job_id)
    if not segmentation:
        return result, None
    path = folder / SEGMENTATION_FILE_NAME
    path.write_bytes(client.segmentation(job_id))
    return result, path


def _cancel_job_quietly(client: BackendClient, job_id: str) -> None:
    """Worker: best effort; a job that already ended or a backend that is gone needs no cancelling."""
    with contextlib.suppress(BackendError):
        client.cancel(job_id)


class DetectionTask:
    """Detect organs in ``volume_node``: ``advance()`` until ``progress.ended``; ``rois`` then holds the boxes."""

    def __init__(
        self,
        scene,
        volume_node,
        connect: Connector,
        worker: Executor,
        options: DetectionOptions | None = None,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
    ) -> None:
        self.scene = scene
        self.volume_node = volume_node
        self.options = options or DetectionOptions()
        self.poll_interval_s = poll_interval_s
        self.client: BackendClient | None = None
        self.health: dict | None = None
        self.job_id: str | None = None
        self.job: JobStatus | None = None
        self.rois: list = []
        self.progress = Progress(CONNECTING, 0.0, _STEP_WORDS[CONNECTING])
        self._volume = snapshot(volume_node)
        self._worker = worker
        self._stop = threading.Event()
        self._folder = Path(tempfile.mkdtemp(prefix="organdetr-upload-"))
        self._next_poll = 0.0
        self._pending: tuple[Future, Callable] | None = None
        self._then(connect, self._connected)

    @property
    def ended(self) -> bool:
        return self.progress.ended

    def _then(self, call: Callable, on_result: Callable, *args) -> None:
        """Run ``call(*args)`` on the worker; ``advance`` hands its value to ``on_result`` on this thread."""
        self._pending = (self._worker.submit(call, *args), on_result)

    def advance(self) -> Progress:
        """Move on if the current step finished; never waits."""
        if self.ended:
            return self.progress
        if self._pending is None:
            if self.progress.state == RUNNING and time.monotonic() >= self._next_poll:
                self._then(self.client.job, self._polled, self.job_id)
            return self.progress
        future, on_result = self._pending
        if not future.done():
            return self.progress
        self._pending = None
        try:
            on_result(future.result())
        except (BackendError, UserInputError) as error:
            self._end(FAILED, str(error))
        except Exception as error:  # a bug or an unexpected answer: shown in one line, the scene stays as it was
            self._end(FAILED, f"Detection failed ({type(error).__name__}: {error}).")
        return self.progress

    def cancel(self) -> None:
        """Stop wherever the task is; returns at once."""
        if self.ended:
            return
        self._stop.set()
        if self.job_id is not None and self.client is not None:
            self._worker.submit(_cancel_job_quietly, self.client, self.job_id)
        self._end(CANCELLED, "Cancelled.")

    # --- steps ------------------------------------------------------------------------------------------------

    def _connected(self, connection: tuple[BackendClient, dict]) -> None:
        self.client, self.health = connection
        self.progress = Progress(UPLOADING, 0.0, _STEP_WORDS[UPLOADING])
        self._then(_upload, self._submitted, self.client, self._volume, self._folder, self.options.request, self._stop)

    def _submitted(self, job_id: str) -> None:
        self.job_id = job_id
        self.progress = Progress(RUNNING, 0.0, "Queued")
        self._next_poll = time.monotonic()

    def _polled(self, job: JobStatus) -> None:
        self.job = job
        if job.status == "failed":
            raise BackendError(failed_job_message(job))
        if job.status == "cancelled":
            self._end(CANCELLED, "The backend cancelled the job.")
        elif job.status == "done":
            self.progress = Progress(FETCHING, 1.0, _STEP_WORDS[FETCHING])
            self._then(_fetch, self._received, self.client, job.job_id, self._folder, self.options.request.segmentation)
        else:
            self.progress = Progress(RUNNING, job.progress, job.stage.capitalize())
            self._next_poll = time.monotonic() + self.poll_interval_s

    def _received(self, fetched) -> None:
        result, segmentation_file = fetched
        check_result_matches_volume(result, self.volume_node, "the backend's result")
        self.rois = create_rois(self.scene, self.volume_node, result, replace=True)
        apply_score_threshold(self.scene, self.volume_node, self.options.score_threshold)
        if segmentation_file is not None:
            load_segmentation_preview(self.scene, self.volume_node, segmentation_file, result.model.classes)
        self._end(DONE, f"{len(self.rois)} organs detected.")

    def _end(self, state: str, words: str) -> None:
        self.progress = Progress(state, 1.0 if state == DONE else self.progress.fraction, words)
        self._pending = None
        # Queued behind any step still running on the worker, so nothing writes into the folder afterwards.
        self._worker.submit(shutil.rmtree, self._folder, True)


@dataclass(frozen=True)
class DriveReport:
    progress: Progress
    longest_step_s: float  # the longest a single advance() kept the calling thread busy
    steps: int


def drive(task, tick_s: float = 0.02, timeout_s: float = 600.0) -> DriveReport:
    """Advance a task (or batch) until it ends, as the GUI timer would, for scripts, tests and benchmarks."""
    longest, steps = 0.0, 0
    deadline = time.monotonic() + timeout_s
    while not task.ended:
        if time.monotonic() > deadline:
            task.cancel()
            break
        started = time.perf_counter()
        task.advance()
        longest = max(longest, time.perf_counter() - started)
        steps += 1
        time.sleep(tick_s)
    return DriveReport(task.progress, longest, steps)
