"""HTTP client of the OrganDETR service (docs/API.md), on the standard library only, so it runs in any Slicer.

Every failure becomes a :class:`BackendError` whose message is one sentence in plain words (connection refused,
bad token, out of memory, bad input with the server's own message), ready for a status line or a message box.
Uploads stream from the file in chunks and can be stopped between chunks.
"""

from __future__ import annotations

import json
import mimetypes
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import api
from .errors import UserInputError
from .export import parse_result
from .schema import DetectionResult

DEFAULT_TIMEOUT_S = 30.0
UPLOAD_TIMEOUT_S = 600.0  # a large CT over a slow link
UPLOAD_CHUNK_BYTES = 1024 * 1024
_OUT_OF_MEMORY_HINTS = ("out of memory", "outofmemory", "cannot allocate memory")


class BackendError(RuntimeError):
    """A backend call failed; ``str(error)`` is the message to show the user."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UploadCancelled(BackendError):
    """The upload was stopped by the caller before it completed."""


def plain_message(status: int, server_message: str) -> str:
    """The user's words for an HTTP error status and the server's message."""
    lowered = server_message.lower()
    if any(hint in lowered for hint in _OUT_OF_MEMORY_HINTS):
        return f"The backend ran out of memory ({server_message}); use the CPU or a smaller volume."
    if status == 401:
        return "The backend refused the access token (401); check the token in the module's settings."
    if status == 413:
        return f"The image is too large for the backend ({server_message})."
    if status == 503:
        return "The backend is busy with other jobs; try again in a moment."
    if status == 404:
        return f"The backend does not know this request ({server_message})."
    if 400 <= status < 500:
        return f"The backend rejected the input: {server_message}"
    return f"The backend failed (HTTP {status}): {server_message}"


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    status: str
    progress: float
    stage: str
    error: str | None

    @property
    def finished(self) -> bool:
        return self.status in api.FINISHED_JOB_STATES


@dataclass(frozen=True)
class DetectionRequest:
    """What to ask the service for, besides the image (the form fields of a job)."""

    top_k: int = api.DEFAULT_TOP_K  # the best box per organ and top_k - 1 alternatives for annotators
    segmentation: bool = False  # also compute the segmentation preview
    include_absent: bool = False  # also return organs judged absent, as detections with present=false

    def form_fields(self) -> dict[str, str]:
        fields = {api.TOP_K_FIELD: str(self.top_k), api.SEGMENTATION_FIELD: _form_bool(self.segmentation)}
        if self.include_absent:  # sent only when asked for, so servers from before schema 1.1 keep working
            fields[api.INCLUDE_ABSENT_FIELD] = _form_bool(True)
        return fields


def _form_bool(value: bool) -> str:
    return "true" if value else "false"


class _MultipartUpload:
    """A multipart/form-data body streamed from a file: an iterable of byte chunks with a known length."""

    def __init__(self, fields: dict[str, str], file_path: Path, should_stop: Callable[[], bool]) -> None:
        boundary = f"organdetr-{uuid.uuid4().hex}"
        self.content_type = f"multipart/form-data; boundary={boundary}"
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
            for name, value in fields.items()
        ]
        file_type = mimetypes.guess_type(file_path.name)[0] or "application/octet-stream"
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{api.IMAGE_FIELD}"; '
            f'filename="{file_path.name}"\r\nContent-Type: {file_type}\r\n\r\n'
        )
        self._head = "".join(parts).encode()
        self._tail = f"\r\n--{boundary}--\r\n".encode()
        self._file_path = file_path
        self._should_stop = should_stop
        self.length = len(self._head) + file_path.stat().st_size + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        yield self._head
        with self._file_path.open("rb") as handle:
            while chunk := handle.read(UPLOAD_CHUNK_BYTES):
                if self._should_stop():
                    raise UploadCancelled("The upload was cancelled.")
                yield chunk
        yield self._tail


class BackendClient:
    """One backend at ``url`` (e.g. ``http://127.0.0.1:8765``) with its bearer token."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if not url.startswith(("http://", "https://")):
            raise UserInputError(f"backend URL {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def _request(self, method: str, path: str, body=None, headers: dict[str, str] | None = None, timeout=None) -> bytes:
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        if self.token:
            request.add_header("Authorization", f"{api.AUTHORIZATION_SCHEME} {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            raise BackendError(plain_message(error.code, _server_message(error)), error.code) from None
        except urllib.error.URLError as error:
            reason = error.reason
            if isinstance(reason, ConnectionRefusedError):
                message = f"Cannot connect to the backend at {self.url} (connection refused); is it running?"
            elif isinstance(reason, TimeoutError):
                message = f"The backend at {self.url} did not answer in time."
            else:
                message = f"Cannot reach the backend at {self.url} ({reason})."
            raise BackendError(message) from None
        except TimeoutError:
            raise BackendError(f"The backend at {self.url} did not answer in time.") from None
        except ConnectionError as error:
            raise BackendError(f"The connection to the backend at {self.url} broke ({error}).") from None

    def _json(self, method: str, path: str, **kwargs) -> dict:
        payload = self._request(method, path, **kwargs)
        try:
            return json.loads(payload)
        except json.JSONDecodeError:
            raise BackendError(f"The server at {self.url} did not answer like an OrganDETR backend.") from None

    def health(self) -> dict:
        return self._json("GET", api.HEALTH_PATH)

    def models(self) -> list[dict]:
        return self._json("GET", api.MODELS_PATH)["models"]

    def submit(
        self,
        image_path: str | Path,
        request: DetectionRequest | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> str:
        """Upload an image file and queue a detection job; returns the job id. ``should_stop`` is asked between
        upload chunks; when it says yes the upload stops with :class:`UploadCancelled`."""
        upload = _MultipartUpload((request or DetectionRequest()).form_fields(), Path(image_path), should_stop)
        headers = {"Content-Type": upload.content_type, "Content-Length": str(upload.length)}
        answer = self._json("POST", api.JOBS_PATH, body=iter(upload), headers=headers, timeout=UPLOAD_TIMEOUT_S)
        return str(answer["job_id"])

    def job(self, job_id: str) -> JobStatus:
        answer = self._json("GET", api.job_path(job_id))
        return JobStatus(
            job_id=str(answer["job_id"]),
            status=str(answer["status"]),
            progress=float(answer.get("progress") or 0.0),
            stage=str(answer.get("stage") or answer["status"]),
            error=answer.get("error"),
        )

    def result(self, job_id: str) -> DetectionResult:
        try:
            return parse_result(self._json("GET", api.job_result_path(job_id)), "backend result")
        except UserInputError as error:
            raise BackendError(f"The backend sent an invalid result: {error}") from None

    def segmentation(self, job_id: str) -> bytes:
        """The NRRD preview label map of a job submitted with ``segmentation=True``."""
        return self._request("GET", api.job_segmentation_path(job_id))

    def cancel(self, job_id: str) -> JobStatus:
        answer = self._json("DELETE", api.job_path(job_id))
        return JobStatus(str(answer["job_id"]), str(answer["status"]), 0.0, str(answer["status"]), None)


def failed_job_message(status: JobStatus) -> str:
    """Plain words for a job that ended in "failed" (the server's error, out-of-memory made explicit)."""
    message = plain_message(500, status.error or "unknown error")
    return message.replace("The backend failed (HTTP 500)", "Detection failed")


def _server_message(error: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(error.read() or b"{}")
        return str(body["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return error.reason if isinstance(error.reason, str) else f"HTTP {error.code}"
