"""The embedded backend and the non-blocking detection with a REAL ``organdetr serve`` child (tiny random
checkpoint): start, health, models, a detection task turned into ROIs and a segmentation preview, batch, cancel in
every step, plain-word errors, clean stop, and how long any step keeps the calling (GUI) thread."""

from __future__ import annotations

import importlib.util
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
import SimpleITK as sitk
from organdetr_client.http_client import BackendClient, BackendError, DetectionRequest
from OrganDETRSlicerLib.backend_process import BackendSettings, EmbeddedBackend
from OrganDETRSlicerLib.batch import BatchTask, scalar_volumes
from OrganDETRSlicerLib.detection_run import (
    CANCELLED,
    DONE,
    FAILED,
    RUNNING,
    UPLOADING,
    DetectionOptions,
    DetectionTask,
    drive,
)
from OrganDETRSlicerLib.roi_nodes import absent_organs, organdetr_rois, roi_label
from OrganDETRSlicerLib.segmentation_preview import segmentation_previews
from OrganDETRSlicerLib.session import BackendChoice, DetectionSession
from OrganDETRSlicerLib.volume_upload import snapshot, write_nrrd

BACKEND_CONFTEST = Path(__file__).resolve().parents[1] / "backend" / "conftest.py"
GUI_STEP_LIMIT_S = 0.1  # what "never blocks the GUI" means here: no single step keeps the thread longer


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The backend tests' tiny randomly initialised detector, saved as a real checkpoint."""
    import torch
    from organdetr.checkpoint import save_checkpoint
    from organdetr.organ_detr import build_model

    spec = importlib.util.spec_from_file_location("organdetr_backend_test_fixtures", BACKEND_CONFTEST)
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    config = fixtures.tiny_detector_config()
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("tiny"), build_model(config.model), config)


@pytest.fixture(scope="module")
def backend(tiny_checkpoint):
    embedded = EmbeddedBackend(BackendSettings(model=str(tiny_checkpoint), device="cpu"))
    embedded.start()
    yield embedded
    embedded.stop()


@pytest.fixture
def worker():
    pool = ThreadPoolExecutor(max_workers=1)
    yield pool
    pool.shutdown(wait=True)


def _connect(client: BackendClient):
    return lambda: (client, client.health())


def test_health_models_and_bad_token(backend):
    client = backend.client()
    health = client.health()
    assert health["status"] == "ok" and health["device"] == "cpu"
    models = client.models()
    assert models[0]["classes"][0] == "Brainstem"
    with pytest.raises(BackendError, match="token") as error:
        BackendClient(backend.url, "wrong-token").models()
    assert error.value.status == 401


def test_uploaded_nrrd_has_the_volume_voxels_and_geometry(mrml, head_neck_case, tmp_path):
    volume = mrml.load_volume(head_neck_case[0])
    written = sitk.ReadImage(str(write_nrrd(snapshot(volume), tmp_path / "volume.nrrd")))
    original = sitk.ReadImage(str(head_neck_case[0]))
    # Slicer's reader may index the voxels differently; the same voxels sit at the same physical points.
    resampled = sitk.Resample(written, original, sitk.Transform(), sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(resampled), sitk.GetArrayFromImage(original))


def test_detection_task_creates_rois_and_preview_without_blocking(backend, mrml, head_neck_case, worker):
    volume = mrml.load_volume(head_neck_case[0])
    options = DetectionOptions(DetectionRequest(segmentation=True))
    task = DetectionTask(mrml.scene, volume, _connect(backend.client()), worker, options, poll_interval_s=0.1)
    report = drive(task, timeout_s=120)
    assert report.progress.state == DONE, report.progress.words
    assert [roi_label(roi) for roi in task.rois] == [roi_label(roi) for roi in organdetr_rois(mrml.scene, volume)]
    # The tiny random model judges some organs absent: every organ is either a box or listed as not in the scan.
    assert len(task.rois) + len(absent_organs(mrml.scene, volume)) == 7 and task.health["device"] == "cpu"
    assert len(segmentation_previews(mrml.scene, volume)) == 1
    worker.submit(lambda: None).result()  # the clean-up queued behind the last step has run
    assert not task._folder.exists()  # temporary upload removed


def test_bad_input_is_reported_in_plain_words(backend, tmp_path):
    broken = tmp_path / "broken.nrrd"
    broken.write_bytes(b"NRRD0004\nnot really an image\n")
    with pytest.raises(BackendError, match="rejected the input"):
        backend.client().submit(broken)


def test_upload_stops_when_asked(backend, tmp_path):
    image = tmp_path / "big.nrrd"
    image.write_bytes(b"\0" * (8 * 1024 * 1024))
    with pytest.raises(BackendError, match="cancelled"):
        backend.client().submit(image, should_stop=lambda: True)
    assert backend.client().health()["status"] == "ok"  # the service keeps serving


@pytest.mark.parametrize("cancel_in", [UPLOADING, RUNNING])
def test_cancel_in_every_step(backend, mrml, small_abdomen_ct, worker, cancel_in):
    volume = mrml.load_volume(small_abdomen_ct)
    client = backend.client()
    blockers = [client.submit(small_abdomen_ct) for _ in range(2)]  # keep the queue busy: the task waits in RUNNING
    task = DetectionTask(mrml.scene, volume, _connect(client), worker, poll_interval_s=0.05)
    deadline = time.monotonic() + 60
    while task.advance().state != cancel_in and not task.ended and time.monotonic() < deadline:
        time.sleep(0.005)
    job_id = task.job_id
    task.cancel()
    assert task.progress.state == CANCELLED and task.advance().state == CANCELLED
    worker.submit(lambda: None).result()
    if job_id is not None:
        assert client.job(job_id).status in ("cancelled", "done")
    assert not organdetr_rois(mrml.scene, volume) and not task._folder.exists()
    for job in blockers:
        client.cancel(job)


def test_batch_reports_each_volume_and_cancels(backend, mrml, head_neck_case, small_abdomen_ct, worker):
    mrml.load_volume(head_neck_case[0], "head and neck")
    mrml.load_volume(small_abdomen_ct, "abdomen")
    volumes = scalar_volumes(mrml.scene)
    batch = BatchTask(mrml.scene, volumes, _connect(backend.client()), worker)
    seen = set()
    while not batch.ended:
        seen.add(batch.advance().words.split(" (")[0])
        time.sleep(0.01)
    assert set(batch.report.boxes) == {"head and neck", "abdomen"} and not batch.report.errors
    assert {"head and neck", "abdomen"} <= seen

    cancelled = BatchTask(mrml.scene, volumes, _connect(backend.client()), worker)
    cancelled.cancel()
    assert cancelled.report.cancelled and cancelled.progress.state == CANCELLED and not cancelled.report.boxes


def test_failed_connection_ends_the_task_with_one_line(mrml, small_abdomen_ct, worker):
    volume = mrml.load_volume(small_abdomen_ct)
    unreachable = BackendClient("http://127.0.0.1:9", "token")  # discard port: nothing listens
    report = drive(DetectionTask(mrml.scene, volume, _connect(unreachable), worker))
    assert report.progress.state == FAILED and "\n" not in report.progress.words
    assert "connection refused" in report.progress.words


def test_session_starts_detects_and_stops_embedded_backend_off_the_calling_thread(
    tiny_checkpoint, mrml, small_abdomen_ct
):
    volume = mrml.load_volume(small_abdomen_ct)
    session = DetectionSession(mrml.scene)
    choice = BackendChoice(embedded=BackendSettings(model=str(tiny_checkpoint), device="cpu"))
    started = time.perf_counter()
    task = session.start_detection(volume, choice, DetectionOptions())
    longest = time.perf_counter() - started
    while not task.ended:
        started = time.perf_counter()
        session.tick()
        longest = max(longest, time.perf_counter() - started)
        time.sleep(0.02)
    assert task.progress.state == DONE, task.progress.words
    tree = [psutil.Process(pid) for pid in session.embedded_backend.descendant_pids()]
    started = time.perf_counter()
    stopping = session.stop_backend()
    longest = max(longest, time.perf_counter() - started)
    stopping.join(timeout=30)
    assert all(not process.is_running() or process.status() == psutil.STATUS_ZOMBIE for process in tree)
    assert longest < GUI_STEP_LIMIT_S, f"a step kept the calling thread {longest * 1000:.0f} ms"
    session.shutdown()


def test_cancel_while_the_embedded_backend_starts_stops_it(tiny_checkpoint, mrml, small_abdomen_ct):
    volume = mrml.load_volume(small_abdomen_ct)
    session = DetectionSession(mrml.scene)
    choice = BackendChoice(embedded=BackendSettings(model=str(tiny_checkpoint), device="cpu"))
    task = session.start_detection(volume, choice, DetectionOptions())
    deadline = time.monotonic() + 30
    while (session.embedded_backend is None or session.embedded_backend.pid is None) and time.monotonic() < deadline:
        session.tick()
        time.sleep(0.01)
    embedded = session.embedded_backend
    session.cancel()
    assert task.progress.state == CANCELLED and session.embedded_backend is None
    deadline = time.monotonic() + 30
    while embedded.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not embedded.running
    session.shutdown()


def test_remote_choice_needs_consent(mrml):
    session = DetectionSession(mrml.scene)
    with pytest.raises(BackendError, match="Confirm"):
        session.connector(BackendChoice(remote=True, url="http://127.0.0.1:9"))
    session.shutdown()


def test_stop_leaves_no_process(tiny_checkpoint):
    embedded = EmbeddedBackend(BackendSettings(model=str(tiny_checkpoint), device="cpu"))
    client = embedded.start()
    url = embedded.url
    tree = [psutil.Process(pid) for pid in embedded.descendant_pids()]
    assert tree and client.health()["status"] == "ok"
    embedded.stop()
    assert not embedded.running
    assert all(not process.is_running() or process.status() == psutil.STATUS_ZOMBIE for process in tree)
    with pytest.raises(BackendError, match="connection refused"):
        BackendClient(url, "token").health()


def test_start_failure_is_reported(tmp_path):
    embedded = EmbeddedBackend(BackendSettings(model=str(tmp_path / "no-such-checkpoint"), device="cpu"))
    with pytest.raises(BackendError, match="exited while starting"):
        embedded.start(timeout_s=60)
    assert not embedded.running


def test_child_gets_the_given_environment_not_slicers(tmp_path):
    """A Python that is not Slicer's gets Slicer's startup environment (no PYTHONHOME / PYTHONPATH of Slicer)."""
    settings = BackendSettings(environment=(("PATH", "/usr/bin:/bin"), ("ORGANDETR_PROBE", "1")))
    environment = settings.child_environment()
    assert environment["ORGANDETR_PROBE"] == "1" and "PYTHONPATH" not in environment
    assert environment["PYTHONUNBUFFERED"] == "1"
