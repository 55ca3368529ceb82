"""The OrganDETR service's API contract, shared by the server, the client and the tests (docs/API.md).

Paths, form fields, job states, limits and the ready line that ``organdetr serve`` prints are defined here once.
"""

from __future__ import annotations

API_PREFIX = "/v1"
HEALTH_PATH = f"{API_PREFIX}/health"
MODELS_PATH = f"{API_PREFIX}/models"
DETECT_PATH = f"{API_PREFIX}/detect"
JOBS_PATH = f"{API_PREFIX}/jobs"


def job_path(job_id: str) -> str:
    """Status (GET) and cancel (DELETE) of one job."""
    return f"{JOBS_PATH}/{job_id}"


def job_result_path(job_id: str) -> str:
    return f"{job_path(job_id)}/result"


def job_segmentation_path(job_id: str) -> str:
    return f"{job_path(job_id)}/segmentation"


# Multipart form fields of POST /v1/detect and /v1/jobs.
IMAGE_FIELD = "image"
TOP_K_FIELD = "top_k"
SEGMENTATION_FIELD = "segmentation"
SERIES_UID_FIELD = "series_uid"
INCLUDE_ABSENT_FIELD = "include_absent"

# Job states, in the order a job goes through them; a job ends in one of the finished ones.
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED_JOB_STATES = ("done", "failed", "cancelled")

JOB_ID_HEADER = "X-OrganDETR-Job-Id"
AUTHORIZATION_SCHEME = "Bearer"

# Limits (server defaults; the server's options can change the last three).
MAX_TOP_K = 20
DEFAULT_TOP_K = 3
DEFAULT_MAX_UPLOAD_MB = 2048
DEFAULT_QUEUE_LIMIT = 8
DEFAULT_PORT = 8000

# ``organdetr serve`` prints exactly one line starting with this prefix, then a space and a JSON object with "url",
# "host", "port", "pid" and "token_source", once it accepts requests.
READY_LINE_PREFIX = "ORGANDETR_READY"
TOKEN_ENV = "ORGANDETR_TOKEN"
