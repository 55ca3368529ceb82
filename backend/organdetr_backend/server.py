"""The HTTP service (FastAPI): health, models, synchronous detect and asynchronous jobs (contract: notes in API.md).

Every endpoint but ``/v1/health`` needs ``Authorization: Bearer <token>`` (compared in constant time) and is
checked before any upload byte is read. Uploads stream to a private temporary folder with the size limit enforced
while they arrive; the image is validated by :mod:`organdetr_backend.image_io` before it is queued, so bad input is
answered with a 4xx JSON error at once. ``/v1/detect`` goes through the same job queue as ``/v1/jobs``, so there is
one inference at a time per device. Errors are ``{"error": {"code": str, "message": str}}``.
"""

from __future__ import annotations

import hmac
import logging
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from organdetr.checkpoint import DEFAULT_MODEL_DIR
from organdetr.errors import UserInputError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .image_io import ImageLimits, read_image
from .jobs import Job, JobQueue, QueueFull, QueueSettings
from .predictor import Predictor
from .upload import UploadTimeout, UploadTooLarge, receive_upload

logger = logging.getLogger(__name__)

MAX_TOP_K = 20
JOB_ID_HEADER = "X-OrganDETR-Job-Id"
NRRD_MEDIA_TYPE = "application/octet-stream"


@dataclass
class ServerSettings:
    """Everything the service needs besides the predictor."""

    token: str
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = 2 * 1024**3
    queue_limit: int = 8
    request_timeout_s: float = 600.0  # how long POST /v1/detect waits for its result before answering 504
    upload_idle_timeout_s: float = 60.0  # an upload that stalls this long is answered 408
    job_ttl_s: float = 3600.0  # finished jobs and their results are kept this long
    temp_dir: Path | None = None  # where uploads are stored while they are read (system default if None)
    image_limits: ImageLimits = field(default_factory=ImageLimits)

    def __post_init__(self) -> None:
        if not self.token:
            raise ValueError("the server needs a non-empty token")


class DetectOptions(BaseModel):
    """Form fields of POST /v1/detect and /v1/jobs."""

    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(3, ge=1, le=MAX_TOP_K, description="boxes per organ: the best one and top_k - 1 candidates")
    segmentation: bool = False
    series_uid: str | None = None


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def _error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _first_validation_problem(errors: list) -> str:
    problem = errors[0]
    where = ".".join(str(part) for part in problem.get("loc", ()) if part not in ("body", "query", "path"))
    return f"{where}: {problem.get('msg', 'invalid value')}" if where else str(problem.get("msg", "invalid value"))


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        return _error_response(error.status, error.code, error.message, error.headers)

    @app.exception_handler(UserInputError)
    async def bad_input(_: Request, error: UserInputError) -> JSONResponse:
        return _error_response(400, "bad_input", str(error))

    @app.exception_handler(UploadTooLarge)
    async def too_large(_: Request, error: UploadTooLarge) -> JSONResponse:
        return _error_response(413, "upload_too_large", str(error), {"Connection": "close"})

    @app.exception_handler(UploadTimeout)
    async def upload_timeout(_: Request, error: UploadTimeout) -> JSONResponse:
        return _error_response(408, "upload_timeout", str(error), {"Connection": "close"})

    @app.exception_handler(QueueFull)
    async def queue_full(_: Request, error: QueueFull) -> JSONResponse:
        return _error_response(503, "queue_full", str(error), {"Retry-After": str(error.retry_after_s)})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        return _error_response(422, "invalid_request", _first_validation_problem(error.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return _error_response(error.status_code, code, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(_: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return _error_response(500, "internal_error", f"{type(error).__name__}: {error}")


def _bearer_check(token: str):
    expected = token.encode()

    def authorize(request: Request) -> None:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode(), expected):
            raise ApiError(401, "unauthorized", "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    return authorize


def _parse_options(fields: dict[str, str]) -> DetectOptions:
    try:
        return DetectOptions.model_validate(fields)
    except ValidationError as error:
        raise ApiError(422, "invalid_options", _first_validation_problem(error.errors())) from None


def _job_outcome_error(job: Job) -> ApiError | None:
    """Why a job's result cannot be served (None when it can)."""
    if job.status == "done":
        return None
    if job.status == "failed" and job.error_code == "bad_input":
        return ApiError(400, "bad_input", job.error or "bad input")
    if job.status == "failed":
        return ApiError(500, "internal_error", job.error or "internal error")
    if job.status == "cancelled":
        return ApiError(409, "cancelled", f"job {job.id} was cancelled")
    return ApiError(409, "not_done", f"job {job.id} is {job.status} (stage {job.stage}); poll until it is done")


def _result_response(job: Job) -> Response:
    problem = _job_outcome_error(job)
    if problem is not None:
        raise problem
    assert job.prediction is not None
    return Response(
        job.prediction.result.model_dump_json(), media_type="application/json", headers={JOB_ID_HEADER: job.id}
    )


def _nrrd_bytes(image: sitk.Image, temp_dir: Path | None) -> bytes:
    """Encode a label map as compressed NRRD (SimpleITK writes files only, so through a private temp folder)."""
    with tempfile.TemporaryDirectory(prefix="organdetr-seg-", dir=temp_dir) as folder:
        path = Path(folder) / "segmentation.nrrd"
        sitk.WriteImage(image, str(path), useCompression=True)
        return path.read_bytes()


def create_app(settings: ServerSettings, predictor: Predictor) -> FastAPI:
    """The FastAPI application serving ``predictor``; its job queue lives as long as the app's lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.jobs = JobQueue(predictor, QueueSettings(queue_limit=settings.queue_limit, ttl_s=settings.job_ttl_s))
        try:
            yield
        finally:
            await run_in_threadpool(app.state.jobs.shutdown)

    app = FastAPI(title="OrganDETR", version=__version__, lifespan=lifespan)
    _install_error_handlers(app)
    public = APIRouter(prefix="/v1")
    protected = APIRouter(prefix="/v1", dependencies=[Depends(_bearer_check(settings.token))])

    def jobs(request: Request) -> JobQueue:
        return request.app.state.jobs

    def find_job(request: Request, job_id: str) -> Job:
        try:
            return jobs(request).get(job_id)
        except KeyError:
            raise ApiError(404, "unknown_job", f"no job {job_id} (unknown or expired)") from None

    async def accept(request: Request) -> Job:
        """Receive the upload, validate options and image, queue the job."""
        jobs(request).check_capacity()  # answer 503 before a large upload, not after it
        upload = await receive_upload(
            request,
            max_bytes=settings.max_upload_bytes,
            idle_timeout_s=settings.upload_idle_timeout_s,
            temp_root=settings.temp_dir,
        )
        try:
            options = _parse_options(upload.fields)
            start = time.perf_counter()
            loaded = await run_in_threadpool(read_image, upload.path, options.series_uid, settings.image_limits)
            read_s = time.perf_counter() - start
        finally:
            await run_in_threadpool(upload.cleanup)
        return jobs(request).submit(loaded, top_k=options.top_k, segmentation=options.segmentation, read_s=read_s)

    @public.get("/health")
    def health() -> dict:
        device = predictor.device_info()
        return {
            "status": "ok",
            "version": __version__,
            "device": device.type,
            "device_name": device.name,
            "gpu_memory_total_mb": device.gpu_memory_total_mb,
            "gpu_memory_free_mb": device.gpu_memory_free_mb,
            "model_loaded": True,
        }

    @protected.get("/models")
    def models() -> dict:
        info = predictor.model_info
        is_default = predictor.checkpoint_directory.resolve() == DEFAULT_MODEL_DIR.resolve()
        return {
            "models": [{"name": info.name, "version": info.version, "classes": info.classes, "default": is_default}]
        }

    @protected.post("/detect")
    async def detect(request: Request) -> Response:
        job = await accept(request)
        if not await run_in_threadpool(job.wait, settings.request_timeout_s):
            jobs(request).cancel(job.id)
            message = f"no result within {settings.request_timeout_s:g} s (job cancelled); use /v1/jobs for long runs"
            raise ApiError(504, "timeout", message, {JOB_ID_HEADER: job.id})
        return _result_response(job)

    @protected.post("/jobs", status_code=202)
    async def submit(request: Request) -> dict:
        job = await accept(request)
        return {"job_id": job.id, "status": job.status}

    @protected.get("/jobs/{job_id}")
    def job_status(request: Request, job_id: str) -> dict:
        return find_job(request, job_id).status_dict()

    @protected.get("/jobs/{job_id}/result")
    def job_result(request: Request, job_id: str) -> Response:
        return _result_response(find_job(request, job_id))

    @protected.get("/jobs/{job_id}/segmentation")
    def job_segmentation(request: Request, job_id: str) -> Response:
        job = find_job(request, job_id)
        if not job.segmentation:
            raise ApiError(404, "no_segmentation", f"job {job_id} was submitted without segmentation=true")
        problem = _job_outcome_error(job)
        if problem is not None:
            raise problem
        assert job.prediction is not None and job.prediction.segmentation is not None
        return Response(
            _nrrd_bytes(job.prediction.segmentation, settings.temp_dir),
            media_type=NRRD_MEDIA_TYPE,
            headers={"Content-Disposition": f'attachment; filename="{job_id}-segmentation.nrrd"'},
        )

    @protected.delete("/jobs/{job_id}")
    def cancel(request: Request, job_id: str) -> dict:
        find_job(request, job_id)
        job = jobs(request).cancel(job_id)
        return {"job_id": job.id, "status": job.status}

    app.include_router(public)
    app.include_router(protected)
    return app
