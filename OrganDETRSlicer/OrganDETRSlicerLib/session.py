"""The module's logic without Slicer's GUI: which backend, the background worker, the running task, edit tracking.

Everything that waits (starting or stopping the embedded backend, network calls, file writes) runs on one worker
thread or, for stopping, its own thread; the GUI thread calls :meth:`DetectionSession.tick` from a timer, which
hands finished background calls to their callbacks and advances the running task. No method here blocks, except
:meth:`shutdown` (Slicer is closing).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from organdetr_client.http_client import BackendClient, BackendError

from .backend_process import BackendSettings, EmbeddedBackend
from .batch import BatchTask
from .detection_run import Connector, DetectionOptions, DetectionTask, Progress
from .edit_tracking import EditTracker
from .roi_nodes import organdetr_rois


@dataclass(frozen=True)
class BackendChoice:
    """Where detection runs: the embedded backend with ``embedded`` settings, or a remote server."""

    remote: bool = False
    url: str = ""
    token: str = ""
    consent: bool = False  # the user agreed that images are sent to the remote server
    embedded: BackendSettings = field(default_factory=BackendSettings)


def _connected(client: BackendClient) -> tuple[BackendClient, dict]:
    return client, client.health()


class DetectionSession:
    def __init__(self, scene) -> None:
        self.scene = scene
        self.task: DetectionTask | BatchTask | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="organdetr-worker")
        self._embedded: EmbeddedBackend | None = None
        self._callbacks: list[tuple[Future, Callable, Callable]] = []
        self._tracker: EditTracker | None = None

    # --- backend ----------------------------------------------------------------------------------------------

    def connector(self, choice: BackendChoice) -> Connector:
        """A function for the worker that returns a connected client and its health answer. Checks what can be
        checked at once (consent, URL) here, so those mistakes are reported before anything starts."""
        if choice.remote:
            if not choice.consent:
                raise BackendError("Confirm that images may be sent to the remote server first.")
            client = BackendClient(choice.url, choice.token)
            return lambda: _connected(client)
        return lambda: _connected(self._embedded_client(choice.embedded))

    def _embedded_client(self, settings: BackendSettings) -> BackendClient:
        """Worker: the embedded backend with these settings, started if needed (replacing one with others)."""
        embedded = self._embedded
        if embedded is None or embedded.settings != settings:
            if embedded is not None:
                embedded.stop()
            embedded = self._embedded = EmbeddedBackend(settings)
        return embedded.start()

    @property
    def embedded_backend(self) -> EmbeddedBackend | None:
        return self._embedded

    def stop_backend(self) -> threading.Thread | None:
        """Stop the embedded backend on a thread of its own (a start in progress on the worker then fails)."""
        embedded, self._embedded = self._embedded, None
        if embedded is None:
            return None
        thread = threading.Thread(target=embedded.stop, name="organdetr-stop", daemon=True)
        thread.start()
        return thread

    def call(self, function: Callable, on_result: Callable, on_error: Callable[[Exception], None]) -> None:
        """Run ``function()`` on the worker; ``tick`` calls ``on_result(value)`` or ``on_error(error)``."""
        self._callbacks.append((self._worker.submit(function), on_result, on_error))

    # --- detection --------------------------------------------------------------------------------------------

    def start_detection(self, volume_node, choice: BackendChoice, options: DetectionOptions) -> DetectionTask:
        self._refuse_second_task()
        self.task = DetectionTask(self.scene, volume_node, self.connector(choice), self._worker, options)
        return self.task

    def start_batch(self, volumes: list, choice: BackendChoice, options: DetectionOptions) -> BatchTask:
        self._refuse_second_task()
        self.task = BatchTask(self.scene, volumes, self.connector(choice), self._worker, options)
        return self.task

    def _refuse_second_task(self) -> None:
        if self.task is not None and not self.task.ended:
            raise BackendError("A detection is already running; wait for it or cancel it.")

    def tick(self) -> Progress | None:
        """GUI timer: deliver finished background calls, advance the running task; returns its progress."""
        finished = [entry for entry in self._callbacks if entry[0].done()]
        self._callbacks = [entry for entry in self._callbacks if not entry[0].done()]
        for future, on_result, on_error in finished:
            error = future.exception()
            if error is None:
                on_result(future.result())
            else:
                on_error(error)
        return self.task.advance() if self.task is not None else None

    def cancel(self) -> None:
        """Cancel the running task; an embedded backend that is still starting for it is stopped too."""
        if self.task is None or self.task.ended:
            return
        embedded = self._embedded
        starting = self.task.progress.state == "connecting" and embedded is not None and embedded.url is None
        self.task.cancel()
        if starting:
            self.stop_backend()

    @property
    def busy(self) -> bool:
        return bool(self._callbacks) or (self.task is not None and not self.task.ended)

    # --- edits ------------------------------------------------------------------------------------------------

    def track_edits(self, volume_node, on_change) -> None:
        """Observe the end of interactions on the volume's boxes (replacing observers of any earlier volume)."""
        self.untrack_edits()
        self._tracker = EditTracker(volume_node, on_change)
        self._tracker.track_all(organdetr_rois(self.scene, volume_node))

    def track_new_box(self, roi) -> None:
        if self._tracker is not None:
            self._tracker.track(roi)

    def untrack_edits(self) -> None:
        """Remove every VTK observer the tracker added (module reload, scene close)."""
        if self._tracker is not None:
            self._tracker.untrack_all()
            self._tracker = None

    def undo_last_edit(self):
        return self._tracker.undo_last_edit() if self._tracker is not None else None

    def shutdown(self) -> None:
        """Slicer is closing or the module reloads: cancel, stop observers and the backend, end the worker."""
        if self.task is not None:
            self.task.cancel()
        self.untrack_edits()
        stopping = self.stop_backend()
        if stopping is not None:
            stopping.join()
        self._worker.shutdown(wait=False, cancel_futures=True)
