"""The HTTP service (FastAPI): health, models, synchronous detect and asynchronous jobs (contract: notes in API.md).

Every endpoint but ``/v1/health`` needs ``Authorization: Bearer <token>`` (compared in constant time) and is
checked before any upload byte is read. Uploads stream to a private temporary folder with the size limit enforced
while they arrive; the image is validated by :mod:`organdetr_backend.image_io` before it is queued, so bad input is
answered with a 4xx JSON error at once. ``/v1/detect`` goes through the same job queue as ``/v1/jobs``, so there is
one inference at a time per device. Errors are ``{"error": {"code": str, "message": str}}`` and never name a
server file. ``/openapi.json`` describes the uploads and the bearer scheme, and ``/docs`` serves Swagger UI from
assets installed with the package (an offline hospital network has no CDN). At log level info every request is
logged on stderr without tokens, query strings or file names.
"""

from __future__ import annotations

import hmac
import importlib.resources
import logging
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Annotated

import SimpleITK as sitk
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from organdetr.checkpoint import DEFAULT_MODEL_DIR
from organdetr.errors import NotAPatientCTError, UserInputError
from organdetr_client.api import (
    API_PREFIX,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_PORT,
    DEFAULT_QUEUE_LIMIT,
    DEFAULT_TOP_K,
    MAX_TOP_K,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from .image_io import ImageLimits, read_image
from .jobs import Job, JobQueue, QueueFull, QueueSettings
from .organ_selection import check_organ_names, parse_organ_names
from .predictor import Predictor
from .upload import UploadTimeout, UploadTooLarge, receive_upload

logger = logging.getLogger(__name__)
access_logger = logging.getLogger(f"{__name__}.access")

JOB_ID_HEADER = "X-OrganDETR-Job-Id"
NRRD_MEDIA_TYPE = "application/octet-stream"
OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"
DOCS_ASSETS_PATH = "/docs-assets"


@dataclass
class ServerSettings:
    """Everything the service needs besides the predictor."""

    token: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * 1024**2
    queue_limit: int = DEFAULT_QUEUE_LIMIT
    request_timeout_s: float = 600.0  # how long POST /v1/detect waits for its result before answering 504
    upload_idle_timeout_s: float = 60.0  # an upload that stalls this long is answered 408
    job_ttl_s: float = 3600.0  # finished jobs and their results are kept this long
    temp_dir: Path | None = None  # where uploads are stored while they are read (system default if None)
    image_limits: ImageLimits = field(default_factory=ImageLimits)

    def __post_init__(self) -> None:
        if not self.token:
            raise ValueError("the server needs a non-empty token")


class DetectOptions(BaseModel):
    """Form fields of POST /v1/detect and /v1/jobs, next to the ``image`` file."""

    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(
        DEFAULT_TOP_K, ge=1, le=MAX_TOP_K, description="boxes per organ: the best one and top_k - 1 candidates"
    )
    segmentation: bool = Field(
        False, description="also compute the segmentation preview's label map (GET /v1/jobs/{job_id}/segmentation)"
    )
    series_uid: str | None = Field(
        None, description="DICOM SeriesInstanceUID to use when the uploaded .zip holds several series"
    )
    include_absent: bool = Field(
        False, description="also give a box for organs judged absent (present=false); they are always listed"
    )
    organs: str | None = Field(
        None, description="comma-separated organ names to report (default: every organ of the model, see /v1/models)"
    )


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
        return _error_response(error.http_status, error.code, str(error))

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
        logger.exception("unhandled error")  # the details (which may name server files) go to the log only
        return _error_response(500, "internal_error", f"internal error ({type(error).__name__}); see the server log")


_bearer_scheme = HTTPBearer(auto_error=False, description="the service's token (see organdetr serve --token-file)")


def _require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)]
) -> None:
    """Every endpoint but health: ``Authorization: Bearer <token>``, compared in constant time."""
    expected = _state(request).settings.token.encode()
    offered = credentials.credentials.strip().encode() if credentials is not None else b""
    if not hmac.compare_digest(offered, expected):
        raise ApiError(401, "unauthorized", "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})


def _parse_options(fields: dict[str, str]) -> DetectOptions:
    try:
        return DetectOptions.model_validate(fields)
    except ValidationError as error:
        raise ApiError(422, "invalid_options", _first_validation_problem(error.errors())) from None


# HTTP status of a job that failed on its input, by error code (as the exceptions' own http_status says).
INPUT_ERROR_STATUS = {
    UserInputError.code: UserInputError.http_status,
    NotAPatientCTError.code: NotAPatientCTError.http_status,
}


def _job_outcome_error(job: Job) -> ApiError | None:
    """Why a job's result cannot be served (None when it can)."""
    if job.status == "done":
        return None
    if job.status == "failed" and job.error_code in INPUT_ERROR_STATUS:
        return ApiError(INPUT_ERROR_STATUS[job.error_code], job.error_code, job.error or "bad input")
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


@dataclass
class ServiceState:
    """What the routes share, kept on ``app.state.service``; the job queue exists while the app's lifespan runs."""

    settings: ServerSettings
    predictor: Predictor
    jobs: JobQueue | None = None


def _state(request: Request) -> ServiceState:
    return request.app.state.service


def _job_queue(request: Request) -> JobQueue:
    jobs = _state(request).jobs
    assert jobs is not None, "the job queue lives as long as the app's lifespan"
    return jobs


def _find_job(request: Request, job_id: str) -> Job:
    try:
        return _job_queue(request).get(job_id)
    except KeyError:
        raise ApiError(404, "unknown_job", f"no job {job_id} (unknown or expired)") from None


def _upload_request_body() -> dict:
    """OpenAPI description of the multipart upload (read by :func:`receive_upload`, not by FastAPI's parser)."""
    options = DetectOptions.model_json_schema()
    image = {"type": "string", "format": "binary", "description": "the CT: NIfTI, NRRD, MetaImage or a .zip of DICOM"}
    schema = {"type": "object", "required": ["image"], "properties": {"image": image, **options["properties"]}}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


async def _accept(request: Request) -> Job:
    """Receive the upload, validate options and image, queue the job."""
    state, jobs = _state(request), _job_queue(request)
    jobs.check_capacity()  # answer 503 before a large upload, not after it
    upload = await receive_upload(
        request,
        max_bytes=state.settings.max_upload_bytes,
        idle_timeout_s=state.settings.upload_idle_timeout_s,
        temp_root=state.settings.temp_dir,
    )
    try:
        options = _parse_options(upload.fields)
        organs = parse_organ_names([options.organs]) if options.organs is not None else None
        if organs is not None:
            check_organ_names(organs, state.predictor.model_info.classes)
        start = time.perf_counter()
        loaded = await run_in_threadpool(read_image, upload.path, options.series_uid, state.settings.image_limits)
        read_s = time.perf_counter() - start
    finally:
        await run_in_threadpool(upload.cleanup)
    return jobs.submit(
        loaded,
        top_k=options.top_k,
        segmentation=options.segmentation,
        read_s=read_s,
        include_absent=options.include_absent,
        organs=organs,
    )


public = APIRouter(prefix=API_PREFIX)
protected = APIRouter(prefix=API_PREFIX, dependencies=[Depends(_require_token)])


@public.get("/health")
def health(request: Request) -> dict:
    device = _state(request).predictor.device_info()
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
def models(request: Request) -> dict:
    predictor = _state(request).predictor
    info = predictor.model_info
    is_default = predictor.checkpoint_directory.resolve() == DEFAULT_MODEL_DIR.resolve()
    return {"models": [{"name": info.name, "version": info.version, "classes": info.classes, "default": is_default}]}


@protected.post("/detect", openapi_extra=_upload_request_body())
async def detect(request: Request) -> Response:
    """Upload a CT and wait for its result (the result JSON); long runs are better submitted to /v1/jobs."""
    timeout_s = _state(request).settings.request_timeout_s
    job = await _accept(request)
    if not await run_in_threadpool(job.wait, timeout_s):
        _job_queue(request).cancel(job.id)
        message = f"no result within {timeout_s:g} s (job cancelled); use /v1/jobs for long runs"
        raise ApiError(504, "timeout", message, {JOB_ID_HEADER: job.id})
    return _result_response(job)


@protected.post("/jobs", status_code=202, openapi_extra=_upload_request_body())
async def submit(request: Request) -> dict:
    """Upload a CT and queue its detection; poll GET /v1/jobs/{job_id}."""
    job = await _accept(request)
    return {"job_id": job.id, "status": job.status}


@protected.get("/jobs")
def list_jobs(request: Request) -> dict:
    """Every known job (queued, running, or finished within the retention time), oldest first."""
    return {"jobs": [job.status_dict() for job in _job_queue(request).all_jobs()]}


@protected.get("/jobs/{job_id}")
def job_status(request: Request, job_id: str) -> dict:
    return _find_job(request, job_id).status_dict()


@protected.get("/jobs/{job_id}/result")
def job_result(request: Request, job_id: str) -> Response:
    return _result_response(_find_job(request, job_id))


@protected.get("/jobs/{job_id}/segmentation")
def job_segmentation(request: Request, job_id: str) -> Response:
    job = _find_job(request, job_id)
    if not job.segmentation:
        raise ApiError(404, "no_segmentation", f"job {job_id} was submitted without segmentation=true")
    problem = _job_outcome_error(job)
    if problem is not None:
        raise problem
    assert job.prediction is not None and job.prediction.segmentation is not None
    return Response(
        _nrrd_bytes(job.prediction.segmentation, _state(request).settings.temp_dir),
        media_type=NRRD_MEDIA_TYPE,
        headers={"Content-Disposition": f'attachment; filename="{job_id}-segmentation.nrrd"'},
    )


@protected.delete("/jobs/{job_id}")
def cancel(request: Request, job_id: str) -> dict:
    _find_job(request, job_id)
    job = _job_queue(request).cancel(job_id)
    return {"job_id": job.id, "status": job.status}


docs = APIRouter(include_in_schema=False)


@docs.get(DOCS_PATH)
def swagger_ui() -> HTMLResponse:
    """Swagger UI from the assets installed with fastapi-offline: works without internet access."""
    return get_swagger_ui_html(
        openapi_url=OPENAPI_PATH,
        title="OrganDETR API",
        swagger_js_url=f"{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_ASSETS_PATH}/favicon.png",
    )


class AccessLog:
    """ASGI middleware writing one line per request: client, method, URL path, status, seconds.

    Never headers (the token), query strings or bodies (uploaded file names, which may identify a patient).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), None

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            client = scope.get("client") or ("-", 0)
            access_logger.info(
                '%s "%s %s" %s %.3f s',
                client[0],
                scope["method"],
                scope["path"],
                status if status is not None else "-",
                time.perf_counter() - start,
            )


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state: ServiceState = app.state.service
    state.jobs = JobQueue(
        state.predictor, QueueSettings(queue_limit=state.settings.queue_limit, ttl_s=state.settings.job_ttl_s)
    )
    try:
        yield
    finally:
        await run_in_threadpool(state.jobs.shutdown)


def create_app(settings: ServerSettings, predictor: Predictor) -> FastAPI:
    """The FastAPI application serving ``predictor``."""
    app = FastAPI(
        title="OrganDETR",
        version=__version__,
        lifespan=_lifespan,
        openapi_url=OPENAPI_PATH,
        docs_url=None,  # served by swagger_ui() with local assets instead of a CDN
        redoc_url=None,
    )
    app.state.service = ServiceState(settings=settings, predictor=predictor)
    _install_error_handlers(app)
    app.include_router(public)
    app.include_router(protected)
    app.include_router(docs)
    app.mount(DOCS_ASSETS_PATH, StaticFiles(directory=swagger_ui_assets()), name="docs-assets")
    app.add_middleware(AccessLog)
    return app


def swagger_ui_assets() -> Path:
    """The folder of Swagger UI's JavaScript and CSS shipped by the fastapi-offline package."""
    return Path(str(importlib.resources.files("fastapi_offline") / "static"))


class ServiceServer(uvicorn.Server):
    """uvicorn for ``organdetr serve``: announces readiness with one line on stdout once the socket listens, and
    cancels the queued and running jobs as soon as a shutdown signal arrives (not after the graceful wait)."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, ready_line: str) -> None:
        super().__init__(config)
        self.app, self.ready_line = app, ready_line

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            print(self.ready_line, flush=True)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        jobs = self.app.state.service.jobs
        if jobs is not None and not self.should_exit:
            # Not inside the signal handler: it may interrupt a thread that holds the queue's lock.
            threading.Thread(target=self._cancel_jobs, args=(jobs,), name="organdetr-cancel").start()
        super().handle_exit(sig, frame)

    @staticmethod
    def _cancel_jobs(jobs: JobQueue) -> None:
        logger.warning("stopping: cancelled %d queued or running jobs", jobs.cancel_all())
