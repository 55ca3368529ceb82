"""A job queue in front of one :class:`~organdetr_backend.predictor.Predictor`.

One worker thread per device runs one inference at a time; further jobs wait in a bounded queue (beyond it,
:class:`QueueFull`, which the server answers with 503 + Retry-After). Jobs report status, stage and progress;
cancelling a queued job removes it, cancelling a running one sets the predictor's cancel event so that it stops at
the next stage boundary. Finished jobs keep their result (and optional segmentation) for ``ttl_s`` seconds.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Literal

from organdetr.errors import UserInputError

from .image_io import LoadedImage
from .predictor import STAGE_PROGRESS, JobCancelled, Prediction, Predictor

logger = logging.getLogger(__name__)

JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]
# Why a job did not finish: the server maps these to HTTP status codes.
ErrorCode = Literal["bad_input", "not_a_ct", "internal_error", "cancelled"]
FINISHED: frozenset[str] = frozenset({"done", "failed", "cancelled"})
# How a run ended: (status, stage, error message, error code).
Outcome = tuple[JobStatus, str, str | None, ErrorCode | None]
CANCELLED: Outcome = ("cancelled", "cancelled", "cancelled", "cancelled")


class QueueFull(Exception):
    """No room for another job (or the queue is shutting down); try again after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class Job:
    """One detection request and everything known about it."""

    id: str
    top_k: int
    segmentation: bool
    read_s: float
    image: LoadedImage | None  # released once the job has run
    include_absent: bool = False
    organs: list[str] | None = None  # None: every organ of the model
    status: JobStatus = "queued"
    stage: str = "queued"
    progress: float = 0.0
    error: str | None = None
    error_code: ErrorCode | None = None
    prediction: Prediction | None = None
    started_at: float | None = None
    finished_at: float | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    finished_event: threading.Event = field(default_factory=threading.Event)

    def status_dict(self) -> dict:
        """The job as the API reports it."""
        return {
            "job_id": self.id,
            "status": self.status,
            "progress": self.progress,
            "stage": self.stage,
            "error": self.error,
        }

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has finished; False on time-out."""
        return self.finished_event.wait(timeout)


@dataclass(frozen=True)
class QueueSettings:
    """Limits of a :class:`JobQueue`."""

    queue_limit: int = 8  # jobs waiting behind the running one
    ttl_s: float = 3600.0  # how long finished jobs (and their results) are kept
    max_finished: int = 32  # at most this many finished jobs are kept (their segmentations can be large)
    default_job_s: float = 10.0  # assumed job duration for Retry-After before any job has finished
    duration_history: int = 20  # finished jobs averaged for Retry-After
    shutdown_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.queue_limit < 1:
            raise ValueError("queue_limit must be at least 1 (a job waits in the queue until the worker takes it)")


class JobQueue:
    """Bounded FIFO of jobs served by one worker thread that owns the predictor."""

    def __init__(self, predictor: Predictor, settings: QueueSettings | None = None) -> None:
        self.predictor = predictor
        self.settings = settings or QueueSettings()
        self._jobs: dict[str, Job] = {}
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: Job | None = None
        self._durations: collections.deque[float] = collections.deque(maxlen=self.settings.duration_history)
        self._stopping = False
        self._condition = threading.Condition()
        self._worker = threading.Thread(target=self._work, name=f"organdetr-{predictor.device}", daemon=True)
        self._worker.start()

    # -- the API used by the server -------------------------------------------------------------------------
    def submit(
        self,
        image: LoadedImage,
        *,
        top_k: int = 3,
        segmentation: bool = False,
        read_s: float = 0.0,
        include_absent: bool = False,
        organs: list[str] | None = None,
    ) -> Job:
        """Queue a detection; raises :class:`QueueFull` when ``queue_limit`` jobs are already waiting."""
        with self._condition:
            self._purge_expired()
            self.check_capacity()
            job = Job(
                id=uuid.uuid4().hex,
                top_k=top_k,
                segmentation=segmentation,
                read_s=read_s,
                image=image,
                include_absent=include_absent,
                organs=organs,
            )
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._condition.notify_all()
            return job

    def check_capacity(self) -> None:
        """Raise :class:`QueueFull` when a job submitted now would be refused (lets the server refuse early)."""
        with self._condition:
            if self._stopping:
                raise QueueFull("the server is shutting down", self.retry_after_s())
            if len(self._waiting) >= self.settings.queue_limit:
                raise QueueFull(
                    f"the job queue is full ({self.settings.queue_limit} waiting); try again later",
                    self.retry_after_s(),
                )

    def get(self, job_id: str) -> Job:
        """The job with this id (KeyError when unknown or expired)."""
        with self._condition:
            self._purge_expired()
            return self._jobs[job_id]

    def all_jobs(self) -> list[Job]:
        """Every job still known (queued, running, finished within the TTL), oldest first."""
        with self._condition:
            self._purge_expired()
            return list(self._jobs.values())

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one is removed at once, a running one stops at its next stage boundary."""
        with self._condition:
            job = self._jobs[job_id]
            self._cancel(job)
            return job

    def cancel_all(self) -> int:
        """Cancel every queued and the running job; returns how many were cancelled."""
        with self._condition:
            unfinished = [job for job in [*self._waiting, self._running] if job and job.status not in FINISHED]
            for job in unfinished:
                self._cancel(job)
            return len(unfinished)

    def shutdown(self) -> None:
        """Refuse new jobs, cancel every queued and running job and stop the worker."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        self.cancel_all()
        self._worker.join(self.settings.shutdown_timeout_s)

    def retry_after_s(self) -> int:
        """Seconds until a slot is likely to free up: the mean job duration times the jobs ahead."""
        mean = sum(self._durations) / len(self._durations) if self._durations else self.settings.default_job_s
        ahead = len(self._waiting) + (1 if self._running else 0)
        return max(1, math.ceil(mean * max(ahead, 1)))

    # -- internals (call with the condition held) -------------------------------------------------------------
    def _cancel(self, job: Job) -> None:
        if job.status in FINISHED:
            return
        job.cancel_event.set()
        if job.status == "queued":
            self._waiting.remove(job)
            self._finish(job, "cancelled", stage="cancelled", error="cancelled", error_code="cancelled")
        else:
            # The worker stops at the next stage boundary; from the client's view the job is cancelled now.
            job.status, job.stage, job.error, job.error_code = "cancelled", "cancelling", "cancelled", "cancelled"

    def _finish(
        self, job: Job, status: JobStatus, *, stage: str, error: str | None = None, error_code: ErrorCode | None = None
    ) -> None:
        job.status, job.stage, job.error, job.error_code = status, stage, error, error_code
        job.image = None
        job.finished_at = time.monotonic()
        job.finished_event.set()

    def _purge_expired(self) -> None:
        """Forget finished jobs older than the TTL, and the oldest ones beyond ``max_finished``."""
        finished = sorted(
            (job for job in self._jobs.values() if job.finished_at is not None), key=lambda job: job.finished_at
        )
        horizon = time.monotonic() - self.settings.ttl_s
        excess = len(finished) - self.settings.max_finished
        for rank, job in enumerate(finished):
            if rank < excess or job.finished_at < horizon:
                del self._jobs[job.id]

    # -- the worker -----------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._condition:
                while not self._waiting and not self._stopping:
                    self._condition.wait()
                if self._stopping:
                    return
                job = self._waiting.popleft()
                job.status, job.started_at = "running", time.monotonic()
                self._running = job
            self._run(job)
            with self._condition:
                self._running = None

    def _run(self, job: Job) -> None:
        def report(stage: str, fraction: float) -> None:
            with self._condition:
                if not job.cancel_event.is_set():
                    job.stage, job.progress = stage, fraction

        assert job.image is not None
        try:
            prediction = self.predictor.predict(
                job.image,
                top_k=job.top_k,
                segmentation=job.segmentation,
                progress=report,
                cancel=job.cancel_event,
                read_s=job.read_s,
                include_absent=job.include_absent,
                organs=job.organs,
            )
        except JobCancelled:
            outcome: Outcome = CANCELLED
        except UserInputError as error:
            outcome = ("failed", "failed", str(error), error.code)
        except Exception as error:  # a bug or an exhausted device must not kill the worker
            logger.exception("job %s failed", job.id)
            outcome = ("failed", "failed", f"{type(error).__name__}: {error}", "internal_error")
        else:
            outcome = ("done", "done", None, None)
        with self._condition:
            if job.cancel_event.is_set():  # cancelled while the last stage ran: the result is not wanted
                outcome = CANCELLED
            elif outcome[0] == "done":
                job.prediction = prediction
                job.progress = STAGE_PROGRESS["done"]
                self._durations.append(time.monotonic() - (job.started_at or 0.0))
            status, stage, error, code = outcome
            self._finish(job, status, stage=stage, error=error, error_code=code)
