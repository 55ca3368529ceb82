"""The embedded backend manager with a REAL ``organdetr serve`` child (tiny random checkpoint): start, health,
models, a detection job turned into ROIs and a segmentation preview, batch, cancel, plain-word errors, clean stop."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import psutil
import pytest
from OrganDETRSlicerLib.backend_client import BackendClient, BackendError
from OrganDETRSlicerLib.backend_process import BackendSettings, EmbeddedBackend
from OrganDETRSlicerLib.batch import run_batch
from OrganDETRSlicerLib.detection_run import DetectionOptions, DetectionRun, write_volume_nrrd
from OrganDETRSlicerLib.roi_nodes import organdetr_rois, roi_label
from OrganDETRSlicerLib.segmentation_preview import segmentation_previews

BACKEND_CONFTEST = Path(__file__).resolve().parents[1] / "backend" / "conftest.py"


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


def test_health_models_and_bad_token(backend):
    client = backend.client()
    health = client.health()
    assert health["status"] == "ok" and health["device"] == "cpu"
    models = client.models()
    assert models[0]["classes"][0] == "Brainstem"
    with pytest.raises(BackendError, match="token") as error:
        BackendClient(backend.url, "wrong-token").models()
    assert error.value.status == 401


def test_detection_job_creates_rois_and_preview(backend, mrml, head_neck_case):
    volume = mrml.load_volume(head_neck_case[0])
    run = DetectionRun(mrml.scene, volume, backend.client(), DetectionOptions(segmentation=True))
    stages = []
    rois = run.run_to_end(on_progress=lambda status: stages.append(status.stage), poll_interval_s=0.1)
    assert stages and stages[-1] == "done"
    assert [roi_label(roi) for roi in rois] == [roi_label(roi) for roi in organdetr_rois(mrml.scene, volume)]
    assert len(rois) == 7
    previews = segmentation_previews(mrml.scene, volume)
    assert len(previews) == 1
    assert run._folder is None  # temporary upload removed


def test_bad_input_is_reported_in_plain_words(backend, tmp_path):
    broken = tmp_path / "broken.nrrd"
    broken.write_bytes(b"NRRD0004\nnot really an image\n")
    with pytest.raises(BackendError, match="rejected the input"):
        backend.client().submit(broken)


def test_batch_and_cancel(backend, mrml, head_neck_case, small_abdomen_ct, tmp_path):
    mrml.load_volume(head_neck_case[0], "head and neck")
    mrml.load_volume(small_abdomen_ct, "abdomen")
    progress = []
    report = run_batch(mrml.scene, backend.client(), on_progress=lambda *args: progress.append(args))
    assert report.boxes == {"head and neck": 7, "abdomen": 7} and not report.errors
    assert {entry[2] for entry in progress} == {"head and neck", "abdomen"}

    client = backend.client()
    image = write_volume_nrrd(mrml.scene.GetFirstNodeByName("abdomen"), tmp_path / "abdomen.nrrd")
    jobs = [client.submit(image) for _ in range(3)]
    cancelled = client.cancel(jobs[-1])
    assert cancelled.status in ("cancelled", "done")
    assert client.job(jobs[-1]).status == cancelled.status
    cancelled_batch = run_batch(mrml.scene, client, should_cancel=lambda: True)
    assert cancelled_batch.cancelled and not cancelled_batch.boxes


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
