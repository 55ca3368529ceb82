"""Result files: exact JSON round trip, safe writes, clear import errors, Slicer markups and CSV exports."""

from __future__ import annotations

import codecs
import csv
import io
import json
import locale

import jsonschema
import numpy as np
import pytest
import SimpleITK as sitk
from organdetr.atomic_file import write_new_text
from organdetr.errors import UserInputError
from organdetr_backend.export import (
    read_result_json,
    result_to_csv,
    result_to_markups,
    write_csv,
    write_markups,
    write_result_json,
)
from organdetr_backend.geometry import orientation_lps_to_ras, voxel_bounds_to_physical
from organdetr_backend.image_io import image_info, read_image
from organdetr_backend.organ_terminology import normalise_organ_name, organ_term
from organdetr_backend.schema import Detection, DetectionResult, ModelInfo, PhysicalBox, Timing, VoxelBounds

ORGANS = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver"}
CLASSES = ["spleen", "kidney_right", "kidney_left", "gallbladder", "liver"]  # label value = index + 1
NON_ASCII_LABEL = "Glándula"


@pytest.fixture(scope="module")
def result(data_dir, small_abdomen_ct) -> DetectionResult:
    """Boxes of real organs of the small abdomen CT (from its label map), one oblique edited box."""
    loaded = read_image(small_abdomen_ct)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "ts_example_ct_sm_3mm" / "label.nii.gz")))
    labels = labels.transpose(2, 1, 0)
    detections = []
    for class_id, organ in ORGANS.items():
        where = np.nonzero(labels == class_id)
        bounds = VoxelBounds(
            min_ijk=tuple(int(w.min()) for w in where), max_ijk_inclusive=tuple(int(w.max()) for w in where)
        )
        box = voxel_bounds_to_physical(bounds, loaded.image)
        detections.append(
            Detection(label=organ, class_id=class_id, score=0.5 + 0.1 * class_id, box=box, voxel_bounds=bounds)
        )
    rotation = np.array(sitk.Euler3DTransform((0, 0, 0), 0.2, -0.3, 0.6).GetMatrix())
    detections[0] = detections[0].model_copy(
        update={"box": detections[0].box.model_copy(update={"orientation": rotation.tolist()}), "source": "edited"}
    )
    return DetectionResult(
        image=image_info(loaded),
        model=ModelInfo(name="organdetr-test", version="0.1.0", weights_sha256="ab" * 32, classes=CLASSES),
        device="cpu",
        timing=Timing(read_s=0.1, preprocess_s=0.2, network_s=1.0 / 3.0, decode_s=0.01, total_s=1.7),
        detections=detections,
    )


def test_json_round_trip_is_exact(result, tmp_path):
    path = write_result_json(result, tmp_path / "result.json")
    assert read_result_json(path) == result
    assert json.loads(path.read_text(encoding="utf-8"))["detections"][1]["box"]["coordinate_system"] == "LPS"


def test_writes_refuse_to_overwrite(result, tmp_path):
    for write, name in ((write_result_json, "r.json"), (write_markups, "r.mrk.json"), (write_csv, "r.csv")):
        path = tmp_path / name
        path.write_text("the user's file", encoding="utf-8")
        with pytest.raises(UserInputError, match="already exists"):
            write(result, path)
        assert path.read_text(encoding="utf-8") == "the user's file"
        write(result, path, overwrite=True)
        assert path.read_text(encoding="utf-8") != "the user's file"


def test_failed_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(UnicodeEncodeError):
        write_new_text(target, '{"text": "' + "x" * 100_000 + '\ud800"}')  # fails half-way through encoding
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind either
    target.write_text("previous", encoding="utf-8")
    with pytest.raises(UnicodeEncodeError):
        write_new_text(target, "\ud800", overwrite=True)
    assert target.read_text(encoding="utf-8") == "previous"


def test_write_into_missing_folder(tmp_path, result):
    with pytest.raises(UserInputError, match="does not exist"):
        write_result_json(result, tmp_path / "nowhere" / "r.json")


def _write(tmp_path, text: str):
    path = tmp_path / "in.json"
    path.write_text(text, encoding="utf-8")
    return path


def _expect_import_error(path, fragment: str) -> None:
    with pytest.raises(UserInputError) as caught:
        read_result_json(path)
    message = str(caught.value)
    assert "\n" not in message and path.name in message and fragment in message, message


def test_malformed_json(tmp_path):
    _expect_import_error(_write(tmp_path, '{"schema_name": '), "not valid JSON")
    _expect_import_error(_write(tmp_path, "[1, 2]"), "expected a JSON object")
    _expect_import_error(tmp_path / "absent.json", "cannot read")


def test_wrong_schema_name_or_version(result, tmp_path):
    document = json.loads(result.model_dump_json())
    _expect_import_error(_write(tmp_path, json.dumps({**document, "schema_name": "other"})), "is not")
    _expect_import_error(_write(tmp_path, json.dumps({**document, "schema_version": "9.9"})), "version '9.9'")


def test_unknown_organ_and_wrong_class_id(result, tmp_path):
    document = json.loads(result.model_dump_json())
    document["detections"][0]["label"] = "appendix"
    _expect_import_error(_write(tmp_path, json.dumps(document)), "unknown organ 'appendix'")
    document = json.loads(result.model_dump_json())
    document["detections"][1]["class_id"] = 4
    _expect_import_error(_write(tmp_path, json.dumps(document)), "expected 2")


def test_validation_errors_summarised_in_one_line(result, tmp_path):
    document = json.loads(result.model_dump_json())
    document["detections"][0]["score"] = 1.5
    document["detections"][1]["box"]["orientation"] = [1, 0, 0]
    document["detections"][2]["box"]["coordinate_system"] = "RAS"
    document["detections"][3]["surprise"] = True
    document["device"] = 3
    path = _write(tmp_path, json.dumps(document))
    _expect_import_error(path, "detections.0.score")
    _expect_import_error(path, "and 2 more")


def test_markups_validate_against_slicer_schema(result, data_dir):
    schema = json.loads((data_dir / "markups-schema-v1.0.3.json").read_text(encoding="utf-8"))
    document = result_to_markups(result)
    jsonschema.validate(document, schema)
    assert [m["name"] for m in document["markups"]] == [d.label for d in result.detections]
    assert {m["type"] for m in document["markups"]} == {"ROI"}
    # Colours are the organs' anatomy colours (as the Slicer module shows them): distinct organs, distinct colours;
    # the two sides of a paired organ share one.
    for markup in document["markups"]:
        assert markup["display"]["color"] == list(organ_term(markup["name"]).colour)
    organs = {normalise_organ_name(d.label)[0] for d in result.detections}
    assert len({tuple(m["display"]["color"]) for m in document["markups"]}) == len(organs) == 3
    broken = json.loads(json.dumps(document))
    broken["markups"][0]["center"] = [1.0, 2.0]
    with pytest.raises(jsonschema.ValidationError):  # the schema check itself can fail
        jsonschema.validate(broken, schema)


def test_markups_load_into_slicer_roi_nodes(result, tmp_path):
    slicer = pytest.importorskip("slicer")
    path = write_markups(result, tmp_path / "boxes.mrk.json")
    scene = slicer.vtkMRMLScene()
    storage = slicer.vtkMRMLMarkupsROIJsonStorageNode()
    scene.AddNode(storage)
    for index, detection in enumerate(result.detections):
        node = storage.AddNewMarkupsNodeFromFile(str(path), "", index)
        assert node is not None and node.IsA("vtkMRMLMarkupsROINode")
        assert node.GetName() == detection.label
        expected_center = np.array(detection.box.center) * [-1.0, -1.0, 1.0]  # LPS -> RAS
        np.testing.assert_allclose(node.GetCenter(), expected_center, atol=1e-6)
        np.testing.assert_allclose(node.GetSize(), detection.box.size, atol=1e-6)
        matrix = node.GetObjectToNodeMatrix()
        rotation = np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)])
        np.testing.assert_allclose(rotation, orientation_lps_to_ras(detection.box.orientation), atol=1e-6)
        color = node.GetDisplayNode().GetSelectedColor()
        np.testing.assert_allclose(color, result_to_markups(result)["markups"][index]["display"]["color"], atol=1e-6)


def test_csv_has_one_row_per_detection(result, tmp_path):
    rows = list(csv.DictReader(io.StringIO(result_to_csv(result))))
    assert len(rows) == len(result.detections)
    for row, detection in zip(rows, result.detections, strict=True):
        assert row["organ"] == detection.label and int(row["class_id"]) == detection.class_id
        assert float(row["score"]) == detection.score and row["source"] == detection.source
        assert row["coordinate_system"] == "LPS"
        assert tuple(float(row[f"center_{a}_mm"]) for a in "xyz") == detection.box.center
        assert tuple(float(row[f"size_{a}_mm"]) for a in "012") == detection.box.size
        assert [float(v) for v in row["orientation"].split()] == detection.box.orientation
        assert tuple(int(row[f"min_{a}"]) for a in "ijk") == detection.voxel_bounds.min_ijk
        assert tuple(int(row[f"max_{a}"]) for a in "ijk") == detection.voxel_bounds.max_ijk_inclusive
    path = write_csv(result, tmp_path / "boxes.csv")
    assert path.read_text(encoding="utf-8") == result_to_csv(result)


def test_csv_without_voxel_bounds():
    box = PhysicalBox(center=(0.0, 0.0, 0.0), size=(1.0, 1.0, 1.0), orientation=list(np.eye(3).ravel()))
    detection = Detection(label="liver", class_id=5, score=1.0, box=box, source="manual")
    rows = list(csv.DictReader(io.StringIO(_csv_of(detection))))
    assert rows[0]["min_i"] == "" and rows[0]["source"] == "manual"


def _csv_of(detection: Detection) -> str:
    info = {"source": "x", "shape": (2, 2, 2), "spacing": (1.0, 1.0, 1.0), "origin": (0.0, 0.0, 0.0)}
    image = {**info, "direction": list(np.eye(3).ravel()), "sha256": "0"}
    model = ModelInfo(name="m", version="1", weights_sha256="0", classes=CLASSES)
    return result_to_csv(DetectionResult(image=image, model=model, device="cpu", detections=[detection]))


@pytest.fixture()
def c_locale():
    """The process locale switched to "C" (ASCII), as some hosts (3D Slicer, GDCM) leave it; restored afterwards."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        locale.setlocale(locale.LC_ALL, "C")
        if codecs.lookup(locale.getpreferredencoding(False)).name == "utf-8":
            pytest.skip("Python's UTF-8 mode is on: the locale does not change the default text encoding")
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def test_writers_keep_non_ascii_labels_in_a_c_locale(result, tmp_path, c_locale):
    first = result.detections[0]
    classes = [NON_ASCII_LABEL if name == first.label else name for name in result.model.classes]
    detections = [first.model_copy(update={"label": NON_ASCII_LABEL}), *result.detections[1:]]
    model = result.model.model_copy(update={"classes": classes})
    labelled = result.model_copy(update={"model": model, "detections": detections})
    json_path = write_result_json(labelled, tmp_path / "r.organdetr.json")
    markups_path = write_markups(labelled, tmp_path / "r.mrk.json")
    csv_path = write_csv(labelled, tmp_path / "r.csv")

    assert read_result_json(json_path).detections[0].label == NON_ASCII_LABEL
    assert json.loads(markups_path.read_text(encoding="utf-8"))["markups"][0]["name"] == NON_ASCII_LABEL
    with csv_path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["organ"] for row in rows] == [d.label for d in detections]
    assert NON_ASCII_LABEL.encode("utf-8") in csv_path.read_bytes()  # raw UTF-8, not an escape
