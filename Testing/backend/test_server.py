"""The HTTP service, started for real: ``organdetr serve --port 0`` in a subprocess (and, where a job must be held
at a known point, uvicorn in a thread), with the tiny real checkpoint and real CT uploads."""

from __future__ import annotations

import inspect
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import jsonschema
import numpy as np
import pytest
import SimpleITK as sitk
import uvicorn
from organdetr.errors import UserInputError
from organdetr_backend.cli import main as cli_main
from organdetr_backend.image_io import read_image
from organdetr_backend.jobs import JobQueue, QueueSettings
from organdetr_backend.predictor import Predictor
from organdetr_backend.schema import SCHEMA_FILE, DetectionResult
from organdetr_backend.serve_command import TOKEN_ENV, resolve_token
from organdetr_backend.server import JOB_ID_HEADER, ServerSettings, create_app

TOKEN = "test-token-0123456789"
UPLOAD_FIELDS = {"image", "top_k", "segmentation", "series_uid", "include_absent", "organs"}
predictor_selects_organs = pytest.mark.skipif(
    not {"organs", "include_absent"} <= set(inspect.signature(Predictor.predict).parameters),
    reason="Predictor.predict does not take organs / include_absent yet",
)
UPLOAD_LIMIT_MB = 1
STARTUP_TIMEOUT_S = 120.0
JOB_TIMEOUT_S = 60.0


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen
    ready: dict


def start_server(token_file: Path, checkpoint: Path, *extra: str, temp_dir: Path | None = None) -> RunningServer:
    """``organdetr serve --port 0`` in its own process (its temporary files in ``temp_dir`` if given); waits for the
    ready line."""
    command = [sys.executable, "-m", "organdetr_backend.cli", "serve", "--port", "0", "--token-file", str(token_file)]
    command += ["--model", str(checkpoint), "--device", "cpu", *extra]
    env = os.environ | ({"TMPDIR": str(temp_dir)} if temp_dir is not None else {})
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8", errors="replace", env=env
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        readable, _, _ = select.select([process.stdout], [], [], 1.0)
        if readable:
            line = process.stdout.readline()
            if line.startswith("ORGANDETR_READY "):
                ready = json.loads(line.split(" ", 1)[1])
                return RunningServer(url=ready["url"], process=process, ready=ready)
            if not line and process.poll() is not None:
                break
    process.kill()
    raise RuntimeError(f"server did not start: {process.stderr.read()}")


def stop_server(server: RunningServer) -> tuple[int, str, str]:
    """SIGTERM; the exit code and what the server wrote to stdout after the ready line and to stderr."""
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=60)
    finally:
        server.process.kill()
        stdout, stderr = server.process.communicate()
    return server.process.returncode, stdout, stderr


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("token") / "token"
    path.write_text(TOKEN + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def server(token_file, tiny_checkpoint) -> Iterator[RunningServer]:
    running = start_server(token_file, tiny_checkpoint, "--max-upload-mb", str(UPLOAD_LIMIT_MB), "--queue-limit", "8")
    yield running
    stop_server(running)


@pytest.fixture()
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as http:
        yield http


def upload(path: Path, name: str | None = None, **fields) -> dict:
    return {
        "files": {"image": (name or path.name, path.read_bytes(), "application/octet-stream")},
        "data": {key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in fields.items()},
    }


def assert_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] and error["message"]
    return error


def wait_finished(http: httpx.Client, job_id: str) -> dict:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        status = http.get(f"/v1/jobs/{job_id}").json()
        if status["status"] in ("done", "failed", "cancelled") and status["stage"] != "cancelling":
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def test_ready_line_and_health_without_token(server: RunningServer) -> None:
    assert server.ready["token_source"] == "file" and "token" not in server.ready
    assert server.ready["host"] == "127.0.0.1" and server.ready["pid"] == server.process.pid
    health = httpx.get(f"{server.url}/v1/health", timeout=30)
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["device"] == "cpu" and body["model_loaded"] is True
    assert body["gpu_memory_total_mb"] is None


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models"),
        ("POST", "/v1/detect"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs"),
        ("GET", "/v1/jobs/abc"),
        ("GET", "/v1/jobs/abc/result"),
        ("GET", "/v1/jobs/abc/segmentation"),
        ("DELETE", "/v1/jobs/abc"),
    ],
)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Basic {TOKEN}", "Bearer"])
def test_every_other_endpoint_needs_the_token(server: RunningServer, method, path, authorization) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.request(method, f"{server.url}{path}", headers=headers, timeout=30)
    assert_error(response, 401)
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_models_lists_the_loaded_model(client: httpx.Client) -> None:
    models = client.get("/v1/models").json()["models"]
    assert [m["name"] for m in models] == ["tiny-test"]
    assert len(models[0]["classes"]) == 7 and models[0]["default"] is False


def test_detect_returns_a_valid_result(client: httpx.Client, small_abdomen_ct) -> None:
    response = client.post("/v1/detect", **upload(small_abdomen_ct, top_k=2))
    assert response.status_code == 200, response.text
    jsonschema.validate(response.json(), json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))
    result = DetectionResult.model_validate_json(response.text)
    assert result.image.source == "ct.nii.gz" and len(result.detections) + len(result.absent) == 7
    assert all(len(d.candidates) == 1 for d in result.detections)
    assert result.timing.read_s > 0
    # The synchronous call went through the job queue: its job is there too.
    job = client.get(f"/v1/jobs/{response.headers[JOB_ID_HEADER]}").json()
    assert job["status"] == "done"


def test_job_lifecycle_with_segmentation(client: httpx.Client, head_neck_case, tmp_path) -> None:
    ct_path, _ = head_neck_case
    submitted = client.post("/v1/jobs", **upload(ct_path, segmentation=True))
    assert submitted.status_code == 202 and submitted.json()["status"] == "queued"
    job_id = submitted.json()["job_id"]
    status = wait_finished(client, job_id)
    assert status == {"job_id": job_id, "status": "done", "progress": 1.0, "stage": "done", "error": None}
    result = DetectionResult.model_validate_json(client.get(f"/v1/jobs/{job_id}/result").text)
    assert result.image.shape == (128, 128, 128)

    response = client.get(f"/v1/jobs/{job_id}/segmentation")
    assert response.status_code == 200 and response.headers["content-type"] == "application/octet-stream"
    (tmp_path / "seg.nrrd").write_bytes(response.content)
    segmentation, image = sitk.ReadImage(str(tmp_path / "seg.nrrd")), sitk.ReadImage(str(ct_path))
    assert segmentation.GetSize() == image.GetSize()
    np.testing.assert_allclose(segmentation.GetDirection(), image.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(segmentation.GetOrigin(), image.GetOrigin(), atol=1e-4)

    # Cancelling a finished job leaves it finished.
    assert client.delete(f"/v1/jobs/{job_id}").json() == {"job_id": job_id, "status": "done"}


def test_job_without_segmentation_and_unknown_jobs(client: httpx.Client, small_abdomen_ct) -> None:
    job_id = client.post("/v1/jobs", **upload(small_abdomen_ct)).json()["job_id"]
    wait_finished(client, job_id)
    assert_error(client.get(f"/v1/jobs/{job_id}/segmentation"), 404)
    for path in ("", "/result", "/segmentation"):
        assert_error(client.get(f"/v1/jobs/no-such-job{path}"), 404)
    assert_error(client.delete("/v1/jobs/no-such-job"), 404)


def _nrrd(path: Path, sizes: str, geometry: str, data: bytes = bytes(128)) -> Path:
    header = f"NRRD0004\ntype: short\ndimension: 3\nsizes: {sizes}\n{geometry}\nencoding: raw\nendian: little\n\n"
    path.write_bytes(header.encode() + data)
    return path


def _write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="module")
def bad_uploads(tmp_path_factory, small_abdomen_ct) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad_uploads")
    compressed = small_abdomen_ct.read_bytes()
    (folder / "truncated.nii.gz").write_bytes(compressed[: len(compressed) // 2])
    (folder / "notes.txt").write_text("not an image", encoding="utf-8")
    (folder / "text.nii.gz").write_bytes(b"not an image at all " * 50)
    nan_volume = np.zeros((8, 8, 8), dtype=np.float32)
    nan_volume[3, 4, 5] = np.nan
    return {
        "truncated gzip": folder / "truncated.nii.gz",
        "wrong format": folder / "notes.txt",
        "not an image": folder / "text.nii.gz",
        "2D image": _write(sitk.Image([16, 16], sitk.sitkInt16), folder / "slice.nii.gz"),
        "4D image": _write(sitk.Image([8, 8, 8, 3], sitk.sitkInt16), folder / "series.nii.gz"),
        "NaN voxels": _write(sitk.GetImageFromArray(nan_volume), folder / "nan.mha"),
        "zero spacing": _nrrd(
            folder / "zero.nrrd", "4 4 4", "space: left-posterior-superior\nspace directions: (0,0,0) (0,1,0) (0,0,1)"
        ),
        "negative spacing": _nrrd(folder / "negative.nrrd", "4 4 4", "spacings: -1 1 1"),
        "gigantic header": _nrrd(folder / "huge.nrrd", "100000 100000 100000", "spacings: 1 1 1"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "truncated gzip",
        "wrong format",
        "not an image",
        "2D image",
        "4D image",
        "NaN voxels",
        "zero spacing",
        "negative spacing",
        "gigantic header",
    ],
)
@pytest.mark.parametrize("endpoint", ["/v1/detect", "/v1/jobs"])
def test_bad_images_get_a_4xx_and_the_server_keeps_serving(client, bad_uploads, case, endpoint) -> None:
    path = bad_uploads[case]
    error = assert_error(client.post(endpoint, **upload(path)), 400)
    assert path.name in error["message"]
    assert "organdetr-upload" not in error["message"] and tempfile.gettempdir() not in error["message"]
    assert client.get("/v1/health").status_code == 200


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.full((16, 16, 16), 40, dtype=np.int16), "constant volume"),
        (np.linspace(2000, 3000, 16**3, dtype=np.float32).reshape(16, 16, 16), "no tissue"),
    ],
)
@pytest.mark.parametrize("endpoint", ["/v1/detect", "/v1/jobs"])
def test_what_is_not_a_ct_of_a_person_gets_422(client, tmp_path, values, message, endpoint) -> None:
    path = _write(sitk.GetImageFromArray(values), tmp_path / "phantom.nrrd")
    response = client.post(endpoint, **upload(path))
    if endpoint == "/v1/jobs":  # a valid image: the job fails on its content, and its result says why
        job_id = response.json()["job_id"]
        assert wait_finished(client, job_id)["status"] == "failed"
        response = client.get(f"/v1/jobs/{job_id}/result")
    error = assert_error(response, 422)
    assert error["code"] == "not_a_ct" and message in error["message"]


def test_bad_requests_get_4xx_json(client: httpx.Client, small_abdomen_ct) -> None:
    assert_error(client.post("/v1/detect", json={"image": "ct.nii.gz"}), 400)  # not multipart
    assert_error(client.post("/v1/detect", data={"top_k": "2"}, files={"other": ("a.txt", b"x")}), 400)
    assert_error(client.post("/v1/detect", **upload(small_abdomen_ct, top_k="many")), 422)
    assert_error(client.post("/v1/detect", **upload(small_abdomen_ct, colour="red")), 422)
    assert_error(client.post("/v1/detect", **upload(small_abdomen_ct, series_uid="1.2.3")), 400)
    assert_error(client.get("/v1/nothing-here"), 404)


def _multipart_chunks(name: str, size: int, boundary: str) -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    chunk = b"\0" * 65536
    for _ in range(size // len(chunk)):
        yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


def test_uploads_over_the_limit_get_413(client: httpx.Client) -> None:
    too_big = int(1.3 * UPLOAD_LIMIT_MB * 1024**2)
    # Declared size over the limit: refused before the body is read.
    response = client.post("/v1/detect", files={"image": ("big.nii.gz", b"\0" * too_big)})
    assert_error(response, 413)
    # Streamed without a declared size: refused while streaming, once the limit is passed.
    boundary = "organdetr-test-boundary"
    response = client.post(
        "/v1/jobs",
        content=_multipart_chunks("big.nii.gz", too_big, boundary),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_error(response, 413)
    assert client.get("/v1/health").status_code == 200


def test_eight_concurrent_clients_all_get_results(server: RunningServer, small_abdomen_ct) -> None:
    def one_client(_: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as http:
            return http.post("/v1/detect", **upload(small_abdomen_ct))

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(one_client, range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    results = [DetectionResult.model_validate_json(r.text) for r in responses]
    assert len({r.image.sha256 for r in results}) == 1
    assert len({r.headers[JOB_ID_HEADER] for r in responses}) == 8


class GatedPredictor(Predictor):
    """The real predictor, held at the start of every job until the test opens the gate: a slow job whose
    progress the test controls exactly."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate, self.entered = threading.Event(), threading.Event()

    def predict(self, *args, **kwargs):
        self.entered.set()
        self.gate.wait(JOB_TIMEOUT_S)
        return super().predict(*args, **kwargs)


@contextmanager
def thread_server(settings: ServerSettings, predictor: Predictor) -> Iterator[str]:
    """uvicorn serving ``create_app`` in a thread on a free loopback port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(settings, predictor), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def test_queue_full_cancel_queued_and_running(tiny_checkpoint, small_abdomen_ct) -> None:
    predictor = GatedPredictor(tiny_checkpoint, device="cpu")
    with (
        thread_server(ServerSettings(token=TOKEN, queue_limit=1), predictor) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as http,
    ):
        running = http.post("/v1/jobs", **upload(small_abdomen_ct)).json()["job_id"]
        assert predictor.entered.wait(JOB_TIMEOUT_S)
        assert http.get(f"/v1/jobs/{running}").json()["status"] == "running"
        queued = http.post("/v1/jobs", **upload(small_abdomen_ct)).json()["job_id"]
        assert http.get(f"/v1/jobs/{queued}").json()["status"] == "queued"

        full = http.post("/v1/jobs", **upload(small_abdomen_ct))
        assert_error(full, 503)
        assert int(full.headers["Retry-After"]) >= 1
        assert_error(http.post("/v1/detect", **upload(small_abdomen_ct)), 503)

        assert http.delete(f"/v1/jobs/{queued}").json() == {"job_id": queued, "status": "cancelled"}
        assert http.get(f"/v1/jobs/{queued}").json()["stage"] == "cancelled"
        assert http.delete(f"/v1/jobs/{running}").json() == {"job_id": running, "status": "cancelled"}
        predictor.gate.set()
        assert wait_finished(http, running)["status"] == "cancelled"
        assert_error(http.get(f"/v1/jobs/{running}/result"), 409)

        # The queue is free again and the worker still runs jobs to the end.
        again = http.post("/v1/detect", **upload(small_abdomen_ct))
        assert again.status_code == 200, again.text


def test_result_of_an_unfinished_job_is_409(tiny_checkpoint, small_abdomen_ct) -> None:
    predictor = GatedPredictor(tiny_checkpoint, device="cpu")
    with (
        thread_server(ServerSettings(token=TOKEN), predictor) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as http,
    ):
        job_id = http.post("/v1/jobs", **upload(small_abdomen_ct, segmentation=True)).json()["job_id"]
        assert_error(http.get(f"/v1/jobs/{job_id}/result"), 409)
        assert_error(http.get(f"/v1/jobs/{job_id}/segmentation"), 409)
        predictor.gate.set()
        assert wait_finished(http, job_id)["status"] == "done"


def test_sigterm_cancels_jobs_and_exits_cleanly(token_file, tiny_checkpoint, head_neck_case, tmp_path) -> None:
    running = start_server(token_file, tiny_checkpoint, temp_dir=tmp_path)
    with httpx.Client(base_url=running.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as http:
        for _ in range(3):
            assert http.post("/v1/jobs", **upload(head_neck_case[0], segmentation=True)).status_code == 202
    # Signalled as soon as the last job is accepted: it still waits behind the others (or is running).
    returncode, _, stderr = stop_server(running)
    assert returncode == 0, stderr
    cancelled = re.search(r"stopping: cancelled (\d+) queued or running jobs", stderr)
    assert cancelled is not None and int(cancelled.group(1)) >= 1, stderr
    assert "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []  # no upload left behind
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{running.url}/v1/health", timeout=5)


def test_token_sources(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    token_path = tmp_path / "token"
    token_path.write_text("  from-file \nsecond line\n", encoding="utf-8")
    assert resolve_token("from-argument", token_path) == ("from-argument", "argument")
    assert resolve_token(None, token_path) == ("from-file", "file")
    generated, source = resolve_token(None, None)
    assert source == "generated" and len(generated) >= 32 and generated != resolve_token(None, None)[0]
    monkeypatch.setenv(TOKEN_ENV, "from-environment")
    assert resolve_token(None, None) == ("from-environment", "environment")
    token_path.write_text("\n", encoding="utf-8")
    with pytest.raises(UserInputError):
        resolve_token(None, token_path)
    with pytest.raises(UserInputError):
        resolve_token(None, tmp_path / "missing")


def test_finished_jobs_are_forgotten_after_the_ttl_or_beyond_the_cap(tiny_predictor, small_abdomen_ct) -> None:
    image = read_image(small_abdomen_ct)
    queue = JobQueue(tiny_predictor, QueueSettings(max_finished=1))
    try:
        first, second = queue.submit(image), queue.submit(image)
        assert second.wait(JOB_TIMEOUT_S) and first.status == second.status == "done"
        assert queue.get(second.id) is second
        with pytest.raises(KeyError):
            queue.get(first.id)
    finally:
        queue.shutdown()
    queue = JobQueue(tiny_predictor, QueueSettings(ttl_s=0.0))
    try:
        job = queue.submit(image)
        assert job.wait(JOB_TIMEOUT_S)
        with pytest.raises(KeyError):
            queue.get(job.id)
    finally:
        queue.shutdown()


def test_time_outs_for_stalled_uploads_and_slow_results(tiny_checkpoint, small_abdomen_ct) -> None:
    predictor = GatedPredictor(tiny_checkpoint, device="cpu")
    settings = ServerSettings(token=TOKEN, upload_idle_timeout_s=0.5, request_timeout_s=0.5)
    with (
        thread_server(settings, predictor) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as http,
    ):
        # The job is held at the gate: the synchronous call gives up, answers 504 and cancels its job.
        response = http.post("/v1/detect", **upload(small_abdomen_ct))
        assert_error(response, 504)
        assert http.get(f"/v1/jobs/{response.headers[JOB_ID_HEADER]}").json()["status"] == "cancelled"
        predictor.gate.set()

        # A client that announces a body and stops sending half-way.
        host, port = url.removeprefix("http://").split(":")
        body = b'--b\r\nContent-Disposition: form-data; name="image"; filename="ct.nii.gz"\r\n\r\n' + b"\0" * 1000
        head = (
            f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(body) + 5000}\r\n\r\n"
        )
        with socket.create_connection((host, int(port)), timeout=30) as stalled:
            stalled.sendall(head.encode() + body)
            answer = stalled.recv(65536).decode()
        assert answer.startswith("HTTP/1.1 408")
        assert http.get("/v1/health").status_code == 200


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_out_of_range_port_is_a_one_line_usage_error(tiny_checkpoint, port, capsys) -> None:
    assert cli_main(["serve", "--port", port, "--token", TOKEN, "--model", str(tiny_checkpoint)]) == 2
    assert capsys.readouterr().err.strip() == "organdetr serve: error: --port must be between 0 and 65535"


def test_openapi_describes_the_uploads_and_the_token(server: RunningServer) -> None:
    spec = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    for path in ("/v1/detect", "/v1/jobs"):
        body = spec["paths"][path]["post"]["requestBody"]
        schema = body["content"]["multipart/form-data"]["schema"]
        assert body["required"] is True and schema["required"] == ["image"]
        assert set(schema["properties"]) == UPLOAD_FIELDS
        assert schema["properties"]["image"]["format"] == "binary"
        assert all(field.get("description") for field in schema["properties"].values())
    schemes = spec["components"]["securitySchemes"]
    (name,) = [key for key, scheme in schemes.items() if scheme == {**scheme, "type": "http", "scheme": "bearer"}]
    operations = [(path, op) for path, item in spec["paths"].items() for op in item.values()]
    secured = {path for path, op in operations if {name: []} in op.get("security", [])}
    assert secured == {path for path, _ in operations} - {"/v1/health"}


def test_docs_page_loads_swagger_ui_from_the_server_itself(server: RunningServer) -> None:
    page = httpx.get(f"{server.url}/docs", timeout=30)
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert {Path(asset).suffix for asset in assets} >= {".js", ".css"}
    assert "http" not in page.text.split("<body>", 1)[1].split("openapi.json")[0].lower()
    for asset in assets:
        assert asset.startswith("/"), asset  # from this server, not a CDN
        response = httpx.get(f"{server.url}{asset}", timeout=30)
        assert response.status_code == 200 and len(response.content) > 1000, asset


def test_job_list(client: httpx.Client, small_abdomen_ct) -> None:
    job_id = client.post("/v1/jobs", **upload(small_abdomen_ct)).json()["job_id"]
    status = wait_finished(client, job_id)
    listed = client.get("/v1/jobs").json()["jobs"]
    assert status in listed and len({job["job_id"] for job in listed}) == len(listed)


def test_unknown_organ_is_refused_with_the_valid_names(client: httpx.Client, small_abdomen_ct) -> None:
    error = assert_error(client.post("/v1/jobs", **upload(small_abdomen_ct, organs="Larynx,Heart")), 400)
    assert error["message"] == (
        "unknown organ(s) Heart; this model detects Brainstem, SpinalCord, RightParotid, LeftParotid, Esophagus, "
        "Larynx, Mandible"
    )


@predictor_selects_organs
def test_organs_and_include_absent(client: httpx.Client, small_abdomen_ct) -> None:
    response = client.post("/v1/detect", **upload(small_abdomen_ct, organs="Larynx, Brainstem", include_absent=True))
    result = DetectionResult.model_validate_json(response.text)
    assert sorted(d.label for d in result.detections) == ["Brainstem", "Larynx"]


def test_access_log_at_info_without_token_or_file_names(token_file, tiny_checkpoint, small_abdomen_ct) -> None:
    running = start_server(token_file, tiny_checkpoint, "--log-level", "info")
    with httpx.Client(base_url=running.url, timeout=60) as http:
        assert http.get("/v1/health").status_code == 200
        assert http.get("/v1/models", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
        headers = {"Authorization": f"Bearer {TOKEN}"}
        response = http.post(
            "/v1/detect?note=query-secret", headers=headers, **upload(small_abdomen_ct, "Doe^J.nii.gz")
        )
        assert response.status_code == 200
    returncode, stdout, stderr = stop_server(running)
    assert returncode == 0 and stdout == ""  # stdout carries the ready line only
    assert re.findall(r'"(\w+ \S+)" (\d+) ', stderr) == [
        ("GET /v1/health", "200"),
        ("GET /v1/models", "401"),
        ("POST /v1/detect", "200"),
    ]
    for secret in (TOKEN, "wrong-token", "Doe^J", "query-secret", "organdetr-upload", str(small_abdomen_ct.parent)):
        assert secret not in stderr
