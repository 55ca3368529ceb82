"""``organdetr detect`` with a real tiny checkpoint on real CTs: outputs, batch behaviour, exit codes."""

from __future__ import annotations

import csv
import inspect
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib.image import imread
from organdetr.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from organdetr_backend.cli import main
from organdetr_backend.detect_command import BATCH_CSV_NAME
from organdetr_backend.predictor import Predictor
from organdetr_backend.schema import DetectionResult

NON_ASCII_LABEL = "Glándula"
predictor_selects_organs = pytest.mark.skipif(
    not {"organs", "include_absent"} <= set(inspect.signature(Predictor.predict).parameters),
    reason="Predictor.predict does not take organs / include_absent yet",
)
# An ASCII-only process locale, as 3D Slicer and other hosts may run with; no UTF-8 mode, no locale coercion.
C_LOCALE_ENV = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}


@pytest.fixture(scope="module")
def non_ascii_checkpoint(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint with a non-ASCII organ name, its config.json raw UTF-8 (as a hand-edited one may be)."""
    folder = tmp_path_factory.mktemp("non_ascii_checkpoint")
    shutil.copy(tiny_checkpoint / WEIGHTS_FILE, folder / WEIGHTS_FILE)
    config = json.loads((tiny_checkpoint / CONFIG_FILE).read_text(encoding="utf-8"))
    config["class_names"][0] = NON_ASCII_LABEL
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    return folder


@pytest.fixture()
def detect(tiny_checkpoint: Path):
    """Run ``organdetr detect`` in-process with the tiny model on the CPU; returns the exit code."""

    def run(*args: str | Path) -> int:
        return main(["detect", *map(str, args), "--model", str(tiny_checkpoint), "--device", "cpu"])

    return run


def organ_labels(result: DetectionResult) -> list[str]:
    """Every organ the result reports: with a box (present or, on request, absent) and judged absent."""
    return [d.label for d in result.detections] + [a.label for a in result.absent]


def _bad_nifti(folder: Path) -> Path:
    path = folder / "broken.nii.gz"
    path.write_bytes(b"this is not a NIfTI file" * 20)
    return path


def test_one_input_without_output_prints_json(detect, small_abdomen_ct, capsys) -> None:
    assert detect(small_abdomen_ct, "--top-k", "2") == 0
    captured = capsys.readouterr()
    result = DetectionResult.model_validate_json(captured.out)
    assert result.image.source == small_abdomen_ct.name
    assert all(len(d.candidates) == 1 for d in result.detections)
    assert captured.err == ""


def test_json_markups_and_csv_outputs_are_valid(detect, small_abdomen_ct, data_dir, tmp_path) -> None:
    json_path, markups_path, csv_path = tmp_path / "r.json", tmp_path / "r.mrk.json", tmp_path / "r.csv"
    assert detect(small_abdomen_ct, "-o", json_path) == 0
    assert detect(small_abdomen_ct, "-o", markups_path, "--format", "mrk") == 0
    assert detect(small_abdomen_ct, "-o", csv_path, "--format", "csv") == 0

    result = DetectionResult.model_validate_json(json_path.read_text(encoding="utf-8"))
    markups = json.loads(markups_path.read_text(encoding="utf-8"))
    jsonschema.validate(markups, json.loads((data_dir / "markups-schema-v1.0.3.json").read_text(encoding="utf-8")))
    assert [m["name"] for m in markups["markups"]] == [d.label for d in result.detections]
    rows = list(csv.DictReader(csv_path.open(encoding="utf-8", newline="")))
    assert [row["organ"] for row in rows] == organ_labels(result)


def test_existing_folder_as_output_gets_a_named_file(detect, small_abdomen_ct, tmp_path) -> None:
    assert detect(small_abdomen_ct, "-o", tmp_path) == 0
    written = tmp_path / "ts_example_ct_sm_3mm_ct.organdetr.json"
    assert organ_labels(DetectionResult.model_validate_json(written.read_text(encoding="utf-8")))


def test_missing_output_folders_are_created(detect, small_abdomen_ct, tmp_path) -> None:
    result, overlay = tmp_path / "new" / "r.json", tmp_path / "other" / "deeper" / "r.png"
    assert detect(small_abdomen_ct, "-o", result, "--overlay", overlay) == 0
    assert organ_labels(DetectionResult.model_validate_json(result.read_text(encoding="utf-8")))
    assert overlay.stat().st_size > 0


def test_overlay_png_and_segmentation_preview(detect, head_neck_case, tmp_path) -> None:
    ct_path, _ = head_neck_case
    overlay, preview = tmp_path / "quicklook.png", tmp_path / "seg.nii.gz"
    assert detect(ct_path, "-o", tmp_path / "r.json", "--overlay", overlay, "--seg-preview", preview) == 0

    pixels = imread(overlay)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels[..., :3].std() > 0.05  # an image, not a blank canvas

    image, segmentation = sitk.ReadImage(str(ct_path)), sitk.ReadImage(str(preview))
    assert segmentation.GetSize() == image.GetSize()
    np.testing.assert_allclose(segmentation.GetSpacing(), image.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(segmentation.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(segmentation.GetDirection(), image.GetDirection(), atol=1e-6)
    assert set(np.unique(sitk.GetArrayFromImage(segmentation)).tolist()) <= set(range(8))


def test_batch_with_one_bad_input_writes_the_others_and_exits_2(
    detect, small_abdomen_ct, head_neck_case, tmp_path, capsys
) -> None:
    bad = _bad_nifti(tmp_path)
    out = tmp_path / "results"
    # Both good inputs are called ct.nii.gz: their outputs get the folder name as a prefix.
    assert detect(small_abdomen_ct, bad, head_neck_case[0], "-o", out, "--overlay", out) == 2
    written = sorted(p.name for p in out.iterdir())
    assert written == [
        "openkbp_pt_201_ct.organdetr.json",
        "openkbp_pt_201_ct.overlay.png",
        "ts_example_ct_sm_3mm_ct.organdetr.json",
        "ts_example_ct_sm_3mm_ct.overlay.png",
    ]
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and str(bad) in errors[0]


def test_refuses_to_overwrite_without_overwrite(detect, small_abdomen_ct, tmp_path, capsys) -> None:
    target = tmp_path / "r.json"
    target.write_text("keep me", encoding="utf-8")
    assert detect(small_abdomen_ct, "-o", target) == 2
    assert target.read_text(encoding="utf-8") == "keep me"
    assert "already exists" in capsys.readouterr().err
    assert detect(small_abdomen_ct, "-o", target, "--overwrite") == 0
    assert DetectionResult.model_validate_json(target.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["{ct}", "{ct}"], "need -o"),
        (["{ct}", "{ct}", "-o", "{tmp}/out", "--seg-preview", "{tmp}/seg.nii.gz"], "must be a folder"),
        (["{ct}", "--top-k", "0"], "--top-k"),
        (["{ct}", "--overlay", "{tmp}/x.jpg"], "--overlay"),
        (["{ct}", "--seg-preview", "{tmp}/x.png"], "--seg-preview"),
        (["{ct}", "-o", "{tmp}/boxes.csv", "--format", "json"], "--format"),
        (["{ct}", "-o", "{tmp}/boxes.mrk.json", "--format", "csv"], "--format"),
        (["{ct}", "--organs", "Brainstem,Heart"], "Heart; this model detects Brainstem, SpinalCord"),
        (["{ct}", "--threads", "0"], "--threads"),
        (["{tmp}/missing.nii.gz"], "no such file"),
    ],
)
def test_usage_errors_exit_2_with_one_line(detect, small_abdomen_ct, tmp_path, capsys, arguments, message) -> None:
    args = [a.format(ct=small_abdomen_ct, tmp=tmp_path) for a in arguments]
    assert detect(*args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def _console_script(*args: str | Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``organdetr`` as its own process (``python -m organdetr_backend.cli``), without the debug switch."""
    env = {key: value for key, value in os.environ.items() if key != "ORGANDETR_DEBUG"} | (extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", "organdetr_backend.cli", *map(str, args)],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        env=env,
        timeout=120,
    )


def test_console_script_reports_bad_input_in_one_line(tiny_checkpoint, tmp_path) -> None:
    """The installed entry point, in its own process: exit code 2, one line on stderr, no traceback."""
    bad = _bad_nifti(tmp_path)
    completed = _console_script("detect", bad, "--model", tiny_checkpoint)
    assert completed.returncode == 2
    assert completed.stdout == ""
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "broken.nii.gz" in lines[0] and "Traceback" not in completed.stderr


def test_detect_process_leaves_monai_matplotlib_and_other_commands_unimported(small_abdomen_ct, tmp_path) -> None:
    """detect with the shipped model, refining its boxes, in its own process: MONAI (seconds to import), scipy.ndimage
    (box refinement labels components with SimpleITK), matplotlib (only for --overlay) and the other commands' modules
    stay unimported."""
    unwanted = (
        "monai",
        "scipy.ndimage",
        "matplotlib",
        "organdetr.train",
        "organdetr.evaluate",
        "organdetr_backend.serve_command",
    )
    code = (
        "import sys; from organdetr_backend.cli import main; status = main(sys.argv[1:]); "
        f"print(sorted(set({unwanted!r}) & set(sys.modules))); sys.exit(status)"
    )
    arguments = ["detect", str(small_abdomen_ct), "-o", str(tmp_path / "r.json"), "--device", "cpu"]
    completed = subprocess.run(
        [sys.executable, "-c", code, *arguments], capture_output=True, encoding="utf-8", timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def test_console_script_in_a_c_locale_keeps_non_ascii_labels(non_ascii_checkpoint, small_abdomen_ct, tmp_path) -> None:
    """Under an ASCII locale the files and stdout are still UTF-8: a non-ASCII organ name survives every output."""
    json_path, csv_path = tmp_path / "r.json", tmp_path / "r.csv"
    common = ("--model", non_ascii_checkpoint, "--device", "cpu")
    for path, output_format in ((json_path, "json"), (csv_path, "csv"), (None, "json")):
        output = ("-o", path) if path is not None else ()
        completed = _console_script(
            "detect", small_abdomen_ct, *output, "--format", output_format, *common, extra_env=C_LOCALE_ENV
        )
        assert completed.returncode == 0, completed.stderr
        assert "Traceback" not in completed.stderr
    printed = DetectionResult.model_validate_json(completed.stdout)
    written = DetectionResult.model_validate_json(json_path.read_text(encoding="utf-8"))
    assert NON_ASCII_LABEL in printed.model.classes and NON_ASCII_LABEL in written.model.classes
    assert organ_labels(printed) == organ_labels(written)
    with csv_path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["organ"] for row in rows] == organ_labels(written)
    assert NON_ASCII_LABEL in {row["organ"] for row in rows}  # every organ is listed, this one included


def test_trailing_slash_means_a_folder(detect, small_abdomen_ct, tmp_path) -> None:
    folder = tmp_path / "results1"
    assert detect(small_abdomen_ct, "-o", f"{folder}/", "--overlay", f"{folder}/") == 0
    assert folder.is_dir()
    assert sorted(p.name for p in folder.iterdir()) == [
        "ts_example_ct_sm_3mm_ct.organdetr.json",
        "ts_example_ct_sm_3mm_ct.overlay.png",
    ]


def test_one_input_is_named_as_in_a_batch(detect, small_abdomen_ct, head_neck_case, tmp_path) -> None:
    alone, batch = tmp_path / "alone", tmp_path / "batch"
    alone.mkdir()
    assert detect(head_neck_case[0], "-o", alone) == 0
    assert detect(head_neck_case[0], small_abdomen_ct, "-o", batch) == 0
    names = [p.name for p in alone.iterdir()]
    assert names == ["openkbp_pt_201_ct.organdetr.json"] and (batch / names[0]).is_file()


@pytest.mark.parametrize(
    ("name", "check"),
    [
        ("boxes.csv", lambda text: next(csv.reader([text.splitlines()[0]]))[0] == "organ"),
        ("boxes.mrk.json", lambda text: "markups" in json.loads(text)),
        ("boxes.json", lambda text: DetectionResult.model_validate_json(text).schema_name),
    ],
)
def test_format_follows_the_output_extension(detect, small_abdomen_ct, tmp_path, name, check) -> None:
    assert detect(small_abdomen_ct, "-o", tmp_path / name) == 0
    assert check((tmp_path / name).read_text(encoding="utf-8"))


def test_existing_output_is_refused_before_the_model_is_loaded(small_abdomen_ct, tmp_path, capsys) -> None:
    """The model folder is broken: had it been loaded first, its error would be the one reported."""
    broken_model = tmp_path / "broken_model"
    broken_model.mkdir()
    (broken_model / CONFIG_FILE).write_text("{not json", encoding="utf-8")
    (broken_model / WEIGHTS_FILE).write_bytes(b"not weights")
    target = tmp_path / "r.json"
    target.write_text("keep me", encoding="utf-8")
    assert main(["detect", str(small_abdomen_ct), "-o", str(target), "--model", str(broken_model)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0]
    assert target.read_text(encoding="utf-8") == "keep me"


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_follow_the_umask(detect, small_abdomen_ct, tmp_path, umask, mode) -> None:
    outputs = [tmp_path / "r.csv", tmp_path / "seg.nii.gz", tmp_path / "r.png"]
    previous = os.umask(umask)
    try:
        assert detect(small_abdomen_ct, "-o", outputs[0], "--seg-preview", outputs[1], "--overlay", outputs[2]) == 0
    finally:
        os.umask(previous)
    assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in outputs} == {path.name: mode for path in outputs}


def test_csv_batch_reports_each_input_and_writes_a_combined_table(
    detect, small_abdomen_ct, head_neck_case, tmp_path, capsys
) -> None:
    inputs = [small_abdomen_ct, head_neck_case[0]]
    out = tmp_path / "results"
    assert detect(*inputs, "-o", out, "--format", "csv") == 0
    progress = [line for line in capsys.readouterr().err.splitlines() if "] " in line]
    assert [line.split("] ")[0].rsplit("[", 1)[1] for line in progress] == ["1/2", "2/2"]
    assert all(str(path) in line for path, line in zip(inputs, progress, strict=True))

    with (out / BATCH_CSV_NAME).open(encoding="utf-8", newline="") as handle:
        combined = list(csv.DictReader(handle))
    for path in inputs:
        with (out / f"{path.parent.name}_ct.csv").open(encoding="utf-8", newline="") as handle:
            own_rows = list(csv.DictReader(handle))
        rows = [{k: v for k, v in row.items() if k != "input"} for row in combined if row["input"] == str(path)]
        assert rows == own_rows and rows


@predictor_selects_organs
def test_organs_and_include_absent(detect, small_abdomen_ct, capsys) -> None:
    assert detect(small_abdomen_ct, "--organs", "Mandible,Brainstem", "Larynx", "--include-absent") == 0
    result = DetectionResult.model_validate_json(capsys.readouterr().out)
    assert sorted(d.label for d in result.detections) == ["Brainstem", "Larynx", "Mandible"]
    assert {a.label for a in result.absent} <= {"Brainstem", "Larynx", "Mandible"}


def test_unknown_model_name_lists_the_installed_ones(small_abdomen_ct, capsys) -> None:
    assert main(["detect", str(small_abdomen_ct), "--model", "no-such-model"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "installed: default / shipped / openkbp-small / organdetr-openkbp-small" in err[0]


def test_shipped_model_by_name(small_abdomen_ct, capsys) -> None:
    assert main(["detect", str(small_abdomen_ct), "--model", "openkbp-small", "--device", "cpu"]) == 0
    assert DetectionResult.model_validate_json(capsys.readouterr().out).model.name == "organdetr-openkbp-small"


def test_models_command_lists_the_installed_models(capsys) -> None:
    assert main(["models", "--json"]) == 0
    (shipped,) = json.loads(capsys.readouterr().out)
    assert shipped["names"] == ["default", "shipped", "openkbp-small", "organdetr-openkbp-small"]
    assert shipped["default"] is True and len(shipped["classes"]) == 7
    assert (Path(shipped["folder"]) / WEIGHTS_FILE).is_file()
