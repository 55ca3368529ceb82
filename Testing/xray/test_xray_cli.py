"""``organdetr xray render`` then ``carve`` end to end on the bundled CT, and bad views folders, 2D box files and
settings refused with one line and exit status 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from organdetr.box_ops import pairwise_iou
from organdetr.xray.silhouettes import world_box
from organdetr_backend.cli import main
from organdetr_backend.image_io import image_sha256, read_image
from organdetr_client.box_geometry import voxel_bounds_to_physical
from organdetr_client.export import read_result_json
from xray_case import OPENKBP_CLASSES, HeadNeckCase

RENDER_SETTINGS = ["--views", "6", "--size", "48", "--shift", "10", "-15", "20", "--device", "cpu"]


@pytest.fixture(scope="module")
def rendered(pt_201: HeadNeckCase, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A views folder and the true silhouette boxes of pt_201, made by the CLI."""
    folder = tmp_path_factory.mktemp("xray")
    views, boxes = folder / "views", folder / "boxes2d.json"
    arguments = ["xray", "render", str(pt_201.ct_path), "-o", str(views), *RENDER_SETTINGS]
    assert main([*arguments, "--label", str(pt_201.label_path), "--boxes2d", str(boxes)]) == 0
    return views, boxes


def test_render_then_carve_round_trip(pt_201: HeadNeckCase, rendered: tuple[Path, Path], tmp_path: Path) -> None:
    views, boxes = rendered
    document = json.loads((views / "views.json").read_text())
    assert len(document["views"]) == 6 and document["views"][0]["rows"] == 48
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(views / document["views"][0]["image"])))
    assert image.shape == (48, 48) and np.isfinite(image).all() and image.max() > 1.0
    output = tmp_path / "result.json"
    assert main(["xray", "carve", str(views), "--boxes2d", str(boxes), "-o", str(output)]) == 0
    result = read_result_json(output)  # the torch-free client (and so the Slicer module) reads it
    # Boxes refer to the CT the views were rendered from: its grid and content hash.
    assert result.image.sha256 == image_sha256(read_image(pt_201.ct_path).image)
    assert [d.label for d in result.detections] == list(OPENKBP_CLASSES) and result.absent == []
    carved = np.array([[*d.box.center, *d.box.size] for d in result.detections])
    truth = np.stack([world_box(c) for c in pt_201.corners])
    ious = np.diag(pairwise_iou(torch.from_numpy(carved), torch.from_numpy(truth)).numpy())
    assert ious.min() > 0.4 and ious.mean() > 0.65, ious
    for detection in result.detections:  # voxel bounds cover the box on the CT grid
        bounds_box = voxel_bounds_to_physical(detection.voxel_bounds, pt_201.ct)
        assert np.all(np.abs(np.array(bounds_box.center) - detection.box.center) < pt_201.ct.GetSpacing()[0])
    # Without -o the result goes to stdout; existing files are not replaced without --overwrite.
    assert main(["xray", "carve", str(views), "--boxes2d", str(boxes), "-o", str(output)]) == 2
    assert main(["xray", "carve", str(views), "--boxes2d", str(boxes), "-o", str(output), "--overwrite"]) == 0


def test_views_without_a_ct_carve_in_their_own_frame(rendered: tuple[Path, Path], tmp_path: Path) -> None:
    """A real C-arm's views name no CT: boxes come in the frame views.json defines, on a 1 mm grid around the
    isocentre; organs seen in fewer than two views are reported absent."""
    views, boxes = rendered
    own = tmp_path / "views"
    shutil.copytree(views, own)
    document = json.loads((own / "views.json").read_text())
    document["volume"] = None
    (own / "views.json").write_text(json.dumps(document))
    few = json.loads(boxes.read_text())
    few["boxes"] = [b for b in few["boxes"] if b["label"] != "Larynx" or b["view"] == 0]
    (tmp_path / "few.json").write_text(json.dumps(few))
    output = tmp_path / "result.json"
    assert main(["xray", "carve", str(own), "--boxes2d", str(tmp_path / "few.json"), "-o", str(output)]) == 0
    result = read_result_json(output)
    assert result.image.spacing == (1.0, 1.0, 1.0) and result.image.source == "views"
    assert [a.label for a in result.absent] == ["Larynx"]
    assert len(result.detections) == len(OPENKBP_CLASSES) - 1


def edit_json(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        document = json.loads((folder / "views.json").read_text())
        change(document)
        (folder / "views.json").write_text(json.dumps(document))

    return apply


def set_view(key: str, value: object, view: int = 1) -> Callable[[Path], None]:
    return edit_json(lambda document: document["views"][view].__setitem__(key, value))


def write_text(text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / "views.json").write_text(text)


def replace_image(pixels: np.ndarray, colour: bool = False) -> Callable[[Path], None]:
    return lambda folder: sitk.WriteImage(sitk.GetImageFromArray(pixels, isVector=colour), str(folder / "view_002.mha"))


# JSON with a NaN token (Python's json module writes and reads them; the format forbids them).
NAN_TRANSLATION = json.dumps(
    {
        "views": [
            {
                "image": "view_000.mha",
                "rows": 48,
                "columns": 48,
                "intrinsics": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                "rotation": [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                "translation": [0, float("nan"), 0],
            }
        ]
    }
)

BAD_VIEWS = {
    "not JSON": (write_text("{views: 1"), "Invalid JSON"),
    "no views.json": (lambda folder: (folder / "views.json").unlink(), "no views.json"),
    "not orthonormal": (set_view("rotation", [[1, 0, 0], [0, 1, 0], [0, 0.3, 1]]), "not orthonormal"),
    "reflection": (set_view("rotation", [[1, 0, 0], [0, 1, 0], [0, 0, -1]]), "reflection"),
    "negative focal length": (set_view("intrinsics", [[-300, 0, 24], [0, 300, 24], [0, 0, 1]]), "focal"),
    "skewed last row": (set_view("intrinsics", [[300, 0, 24], [0, 300, 24], [0, 0.1, 1]]), "third"),
    "NaN translation": (write_text(NAN_TRANSLATION), "finite"),
    "rows zero": (set_view("rows", 0), "rows"),
    "different detector sizes": (set_view("rows", 40), "different detector sizes"),
    "wrong image size": (edit_json(lambda document: [v.__setitem__("rows", 40) for v in document["views"]]), "pixels"),
    "unknown key": (set_view("focal", 3), "Extra inputs"),
    "missing image": (set_view("image", "nothere.mha"), "no such image"),
    "image outside folder": (set_view("image", "../views.json"), "file name inside"),
    "NaN pixel": (replace_image(np.full((48, 48), np.nan, dtype=np.float32)), "non-finite"),
    "colour image": (replace_image(np.zeros((48, 48, 3), dtype=np.uint8), colour=True), "components"),
    "unreadable image": (lambda folder: (folder / "view_002.mha").write_bytes(b"garbage"), "not a readable image"),
    "no views": (edit_json(lambda document: document.__setitem__("views", [])), "at least 1"),
    "wrong format": (edit_json(lambda document: document.__setitem__("format", "other")), "format"),
}


@pytest.mark.parametrize("problem", BAD_VIEWS)
def test_bad_views_folder_is_one_line_and_exit_2(
    problem: str, rendered: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    views, boxes = rendered
    bad = tmp_path / "views"
    shutil.copytree(views, bad)
    spoil, message = BAD_VIEWS[problem]
    spoil(bad)
    assert main(["xray", "carve", str(bad), "--boxes2d", str(boxes), "-o", str(tmp_path / "r.json")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("organdetr xray: error: ") and message in error, error
    assert not (tmp_path / "r.json").exists()


BAD_BOXES = {
    "view out of range": ({"view": 6, "label": "Larynx", "box": [1, 1, 5, 5]}, "does not exist"),
    "unknown organ": ({"view": 0, "label": "Liver", "box": [1, 1, 5, 5]}, "not one of the classes"),
    "inverted box": ({"view": 0, "label": "Larynx", "box": [5, 1, 1, 5]}, "min < max"),
    "second box": ({"view": 0, "label": "Brainstem", "box": [1, 1, 5, 5]}, "second box"),
    "score above 1": ({"view": 0, "label": "Larynx", "box": [1, 1, 5, 5], "score": 2}, "less than or equal"),
}


@pytest.mark.parametrize("problem", BAD_BOXES)
def test_bad_boxes2d_file_is_one_line_and_exit_2(
    problem: str, rendered: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    views, boxes = rendered
    entry, message = BAD_BOXES[problem]
    document = json.loads(boxes.read_text())
    document["boxes"] = [b for b in document["boxes"] if b["label"] != "Larynx"] + [entry]
    (tmp_path / "bad.json").write_text(json.dumps(document))
    assert main(["xray", "carve", str(views), "--boxes2d", str(tmp_path / "bad.json")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error, error


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["--views", "0"], "number of views"),
        (["--sid", "1300"], "source-to-isocentre < source-to-detector"),
        (["--pixel-spacing", "nan"], "pixel spacing"),
        (["--label", "x.nii.gz"], "go together"),
    ],
)
def test_bad_render_settings_are_one_line_and_exit_2(
    settings: list[str], message: str, pt_201: HeadNeckCase, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    arguments = ["xray", "render", str(pt_201.ct_path), "-o", str(tmp_path / "views"), *settings]
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error, error
    assert not (tmp_path / "views").exists()


def test_console_script_prints_no_traceback(rendered: tuple[Path, Path], tmp_path: Path) -> None:
    views, boxes = rendered
    bad = tmp_path / "views"
    shutil.copytree(views, bad)
    set_view("rotation", [[1, 0, 0], [0, 2, 0], [0, 0, 1]])(bad)
    command = [sys.executable, "-m", "organdetr_backend.cli", "xray", "carve", str(bad), "--boxes2d", str(boxes)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [completed.stderr.strip()]
    assert "Traceback" not in completed.stderr and "not orthonormal" in completed.stderr


def test_render_never_replaces_silently_and_leaves_no_partial_folders(
    pt_201: HeadNeckCase, rendered: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    views, _ = rendered
    target = tmp_path / "views"
    shutil.copytree(views, target)
    (target / "marker.txt").write_text("old")
    render = ["xray", "render", str(pt_201.ct_path), *RENDER_SETTINGS]
    assert main([*render, "-o", str(target)]) == 2
    assert "already exists" in capsys.readouterr().err and (target / "marker.txt").exists()
    assert main([*render, "-o", str(tmp_path / "missing" / "views")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([*render, "-o", str(target), "--overwrite"]) == 0
    assert not (target / "marker.txt").exists() and (target / "views.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["views"]  # no staging or retired folders left


@pytest.mark.parametrize(
    ("arguments", "threads"),
    [
        (["xray", "carve", "v", "--boxes2d", "b.json"], None),
        (["xray", "carve", "v", "--boxes2d", "b.json", "--threads", "3"], 3),
        (["xray", "--threads", "2", "render", "ct.nii.gz", "-o", "v"], 2),
    ],
)
def test_threads_option_before_or_after_the_xray_command(arguments: list[str], threads: int | None) -> None:
    from organdetr_backend.cli import build_parser

    assert build_parser().parse_args(arguments).threads == threads


def test_label_map_on_another_grid_is_refused(pt_201: HeadNeckCase, tmp_path: Path, capsys) -> None:
    label = sitk.ReadImage(str(pt_201.label_path))
    label.SetOrigin([value + 2.0 for value in label.GetOrigin()])
    shifted = tmp_path / "shifted.nii.gz"
    sitk.WriteImage(label, str(shifted))
    arguments = ["xray", "render", str(pt_201.ct_path), "-o", str(tmp_path / "views"), *RENDER_SETTINGS]
    assert main([*arguments, "--label", str(shifted), "--boxes2d", str(tmp_path / "boxes.json")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "label map grid differs from the CT's (origin" in error, error
    assert not (tmp_path / "views").exists()
