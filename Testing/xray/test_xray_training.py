"""MV2D training and use end to end on the bundled CT: a short real training run (resumed once), ``xray detect`` on
rendered views into a schema-valid result (and its 2D boxes back into ``carve``), ``xray evaluate``, and bad views
folders, model folders and training options refused with one line and exit status 2."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from organdetr.box_ops import pairwise_iou
from organdetr.dataset import CaseRecord
from organdetr.optimizer import lr_factor
from organdetr.xray.camera import CArmGeometry
from organdetr.xray.inference import fit_views_to_model
from organdetr.xray.scenes import SceneConfig, make_scene, read_case
from organdetr.xray.silhouettes import world_box
from organdetr.xray.training import LAST, MIN_LR_FACTOR, STATE_FILE
from organdetr.xray.training_config import XrayTrainingConfig, preset
from organdetr.xray.views_file import ViewSet
from organdetr_backend.cli import main
from organdetr_client.export import read_result_json
from test_xray_cli import BAD_VIEWS
from xray_case import OPENKBP_CLASSES, HeadNeckCase

# The test preset's detector: 32^2 pixels of 20 mm (what `xray render --size 32` makes).
TEST_RENDER = ["--views", "4", "--size", "32", "--shift", "10", "-15", "20", "--device", "cpu"]


@pytest.fixture(scope="module")
def dataset_json(head_neck_case: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pt_201 as the only training and validation case."""
    ct, label = head_neck_case
    labels = {"0": "background", **{str(i + 1): name for i, name in enumerate(OPENKBP_CLASSES)}}
    case = {"image": str(ct), "label": str(label)}
    path = tmp_path_factory.mktemp("data") / "dataset.json"
    path.write_text(json.dumps({"labels": labels, "training": [case], "validation": [case]}))
    return path


@pytest.fixture(scope="module")
def trained(dataset_json: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A test-preset run: 6 steps, then resumed to the schedule's end (20 steps)."""
    folder = tmp_path_factory.mktemp("run")
    run, cache = folder / "run", folder / "cache"
    train = ["xray", "train", "--data", str(dataset_json), "--output", str(run), "--preset", "test"]
    assert main([*train, "--cache-dir", str(cache), "--max-steps", "6"]) == 0
    state = torch.load(run / LAST / STATE_FILE, weights_only=True)
    assert state["step"] == 6
    assert main([*train, "--cache-dir", str(cache), "--resume"]) == 0
    return {"run": run, "cache": cache, "data": dataset_json}


def test_short_training_run_checkpoints_and_resumes(trained: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    run = trained["run"]
    again = ["xray", "train", "--data", str(trained["data"]), "--output", str(run), "--resume"]
    assert main(again) == 0 and "already finished" in capsys.readouterr().out  # resuming a finished run: no-op
    for folder in ("last", "best"):
        assert {"model.safetensors", "xray_config.json"} <= {p.name for p in (run / folder).iterdir()}
    assert torch.load(run / LAST / STATE_FILE, weights_only=True)["step"] == 20
    history = json.loads((run / "history.json").read_text())
    validations = [row for row in history if "val_AP50" in row]
    assert [row["step"] for row in validations] == [10, 20]  # one before the stop, one after the resume
    assert all(np.isfinite(row["val_median_centre_error_mm"]) for row in validations)
    assert (run / "training_curves.png").stat().st_size > 0
    assert XrayTrainingConfig.from_json_file(run / "best" / "xray_config.json") == preset("test")
    assert json.loads((run / "best" / "validation.json").read_text())["mv2d"]["organs_with_a_box"] == "7/7"


def test_detect_writes_a_schema_valid_result_whose_2d_boxes_carve(
    pt_201: HeadNeckCase, trained: dict[str, Path], tmp_path: Path
) -> None:
    views, result_path, boxes = tmp_path / "views", tmp_path / "result.json", tmp_path / "boxes2d.json"
    assert main(["xray", "render", str(pt_201.ct_path), "-o", str(views), *TEST_RENDER]) == 0
    model = str(trained["run"] / "best")
    arguments = ["xray", "detect", str(views), "-o", str(result_path), "--model", model, "--boxes2d", str(boxes)]
    assert main([*arguments, "--device", "cpu"]) == 0
    result = read_result_json(result_path)  # validated by the schema the Slicer module reads
    assert result.model.name == "xray-mv2d" and result.model.classes == list(OPENKBP_CLASSES)
    reported = sorted([d.label for d in result.detections] + [a.label for a in result.absent])
    assert reported == sorted(OPENKBP_CLASSES)
    document = json.loads((views / "views.json").read_text())
    isocenter = np.array(document["isocenter"])
    for detection in result.detections:  # boxes lie in the isocentre frame, the LPS mm of views.json
        assert detection.presence is not None and detection.presence >= result.presence_threshold
        assert np.all(np.abs(np.array(detection.box.center) - isocenter) <= 200.0)
    carved = tmp_path / "carved.json"
    assert main(["xray", "carve", str(views), "--boxes2d", str(boxes), "-o", str(carved)]) == 0
    assert read_result_json(carved).model.name == "xray-carving"
    assert main([*arguments, "--device", "cpu"]) == 2  # outputs exist: not replaced without --overwrite


def test_views_of_another_detector_are_resampled_to_the_trained_pixel_size(pt_201: HeadNeckCase) -> None:
    config = preset("test")  # 32 pixels of 20 mm; these views have 64 of 10 mm
    case = read_case(CaseRecord("pt_201", pt_201.ct_path, pt_201.label_path, ()), OPENKBP_CLASSES)
    scene = make_scene(case, SceneConfig(c_arm=CArmGeometry(num_views=3, rows=64, columns=64, pixel_spacing_mm=10.0)))
    views = ViewSet(scene.cameras, scene.images, scene.isocenter)
    cameras, images, zoom = fit_views_to_model(views, config)
    assert images.shape == (3, 32, 32) and zoom == 0.5
    point = torch.as_tensor(pt_201.corners[6].mean(axis=0))
    for given, fitted in zip(scene.cameras, cameras, strict=True):
        torch.testing.assert_close(fitted.project(point)[0], (given.project(point)[0] + 0.5) * 0.5 - 0.5)
    # Mean intensity is kept (area averaging of line integrals).
    assert abs(float(images.mean()) - float(scene.images.mean())) < 0.02 * float(scene.images.mean())


def test_scene_subset_keeps_cameras_images_and_boxes_together(pt_201: HeadNeckCase) -> None:
    case = read_case(CaseRecord("pt_201", pt_201.ct_path, pt_201.label_path, ()), OPENKBP_CLASSES)
    scene = make_scene(case, SceneConfig(c_arm=CArmGeometry(num_views=5, rows=16, columns=16, pixel_spacing_mm=40.0)))
    part = scene.subset([1, 4]).subset([1])
    assert part.views == (4,) and part.images.shape == (1, 16, 16)
    torch.testing.assert_close(part.images[0], scene.images[4])
    assert np.array_equal(part.boxes2d, scene.boxes2d[[4]], equal_nan=True)
    assert np.allclose(part.cameras[0].rotation, scene.cameras[4].rotation)


def test_learning_rate_warms_up_then_decays() -> None:
    factors = [lr_factor(step, 10, 100, final_fraction=MIN_LR_FACTOR) for step in range(100)]
    assert factors[0] == 0.1 and factors[9] == 1.0 and factors[10] == 1.0
    assert all(a >= b for a, b in itertools.pairwise(factors[10:])) and factors[-1] < 0.06


def test_evaluate_reports_mv2d_beside_both_baselines(trained: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "metrics.json"
    arguments = ["xray", "evaluate", "--data", str(trained["data"]), "--model", str(trained["run"] / "best")]
    assert main([*arguments, "--cache-dir", str(trained["cache"]), "--views", "3,2", "-o", str(output)]) == 0
    results = json.loads(output.read_text())["results"]
    assert [r["views"] for r in results] == [3, 2]
    for result in results:
        assert {"mv2d", "carving_predicted_2d", "mean_box_prior", "view_detector_2d"} <= set(result)
        assert set(result["mv2d"]["per_organ"]) == set(OPENKBP_CLASSES)
        organ = result["mv2d"]["per_organ"]["Mandible"]
        assert {"AP50", "mean_IoU", "centre_error_mm", "size_error_mm"} <= set(organ)


# A few of the views-folder problems `carve` refuses, for `detect`.
DETECT_BAD_VIEWS = ("not JSON", "no views.json", "not orthonormal", "wrong image size", "NaN pixel", "no views")


@pytest.mark.parametrize("problem", DETECT_BAD_VIEWS)
def test_detect_refuses_bad_views_with_one_line(
    problem: str, pt_201: HeadNeckCase, trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    views = tmp_path / "views"
    assert main(["xray", "render", str(pt_201.ct_path), "-o", str(views), "--views", "3", "--size", "48"]) == 0
    spoil, message = BAD_VIEWS[problem]
    spoil(views)
    capsys.readouterr()
    output = tmp_path / "result.json"
    arguments = ["xray", "detect", str(views), "-o", str(output), "--model", str(trained["run"] / "best")]
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("organdetr xray: error: ") and message in error, error
    assert not output.exists()


def test_detect_refuses_a_bad_model_folder(trained: dict[str, Path], tmp_path: Path, capsys) -> None:
    model = tmp_path / "model"
    shutil.copytree(trained["run"] / "best", model)
    (model / "xray_config.json").write_text('{"model": {"d_model": 8}}')
    assert main(["xray", "detect", str(tmp_path), "--model", str(model)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "do not fit" in error, error


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--resume"], "nothing to resume"),
        (["--dense-lambda", "1.5"], "--dense-lambda"),
        (["--preset", "huge"], "unknown preset"),
        (["--steps", "0"], "--steps must be positive"),
    ],
)
def test_bad_training_options_are_one_line_and_exit_2(
    options: list[str], message: str, dataset_json: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    arguments = ["xray", "train", "--data", str(dataset_json), "--output", str(tmp_path / "run"), *options]
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error, error


def test_shipped_model_finds_the_organs_of_a_validation_ct(pt_201: HeadNeckCase, tmp_path: Path) -> None:
    """The shipped model (trained on 64^2 views) on 128^2 views of pt_201, a validation case it never trained on:
    resampled to its pixel size, every organ gets a box near the truth (validation: mean IoU 0.51, median centre
    error 9 mm with 10 views)."""
    views, output = tmp_path / "views", tmp_path / "result.json"
    render = ["xray", "render", str(pt_201.ct_path), "-o", str(views), "--views", "10", "--shift", "12", "-20", "8"]
    assert main([*render, "--device", "cpu"]) == 0
    assert main(["xray", "detect", str(views), "-o", str(output), "--device", "cpu"]) == 0
    result = read_result_json(output)
    assert result.model.name == "xray-mv2d" and result.absent == []
    found = np.array([[*d.box.center, *d.box.size] for d in result.detections])
    truth = np.stack([world_box(c) for c in pt_201.corners])
    ious = np.diag(pairwise_iou(torch.from_numpy(found), torch.from_numpy(truth)).numpy())
    centre_errors = np.linalg.norm(found[:, :3] - truth[:, :3], axis=1)
    assert ious.mean() > 0.35 and np.median(centre_errors) < 20.0, (ious, centre_errors)
