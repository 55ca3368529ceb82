"""The predictor end to end with a real (tiny, random) checkpoint on real CTs."""

from __future__ import annotations

import hashlib
import json
import threading

import jsonschema
import numpy as np
import pytest
import SimpleITK as sitk
from organdetr.config import PreprocessConfig
from organdetr.errors import NotAPatientCTError, UserInputError
from organdetr.preprocess import preprocess_image, preprocess_label
from organdetr_backend.ct_content import CTContentLimits, check_ct_content
from organdetr_backend.image_io import LoadedImage, read_image
from organdetr_backend.predictor import STAGE_PROGRESS, JobCancelled, Predictor, network_grid_to_image
from organdetr_backend.schema import SCHEMA_FILE, DetectionResult


def _same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing())
        and np.allclose(a.GetOrigin(), b.GetOrigin())
        and np.allclose(a.GetDirection(), b.GetDirection())
    )


def test_predict_returns_a_valid_result(tiny_predictor: Predictor, tiny_checkpoint, small_abdomen_ct) -> None:
    loaded = read_image(small_abdomen_ct)
    stages: list[tuple[str, float]] = []
    prediction = tiny_predictor.predict(
        loaded, top_k=3, progress=lambda s, f: stages.append((s, f)), read_s=0.25, include_absent=True
    )
    result = prediction.result

    document = json.loads(result.model_dump_json())
    jsonschema.validate(document, json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))
    assert DetectionResult.model_validate(document) == result
    assert prediction.segmentation is None
    assert [stage for stage, _ in stages] == ["preprocessing", "network", "decoding", "done"]
    assert [fraction for _, fraction in stages] == [STAGE_PROGRESS[s] for s, _ in stages]

    weights = (tiny_checkpoint / "model.safetensors").read_bytes()
    assert result.model.weights_sha256 == hashlib.sha256(weights).hexdigest()
    assert result.model.classes == list(tiny_predictor.config.class_names)
    assert result.image.shape == loaded.image.GetSize()
    assert result.device == "cpu"
    timing = result.timing
    assert timing.read_s == 0.25
    assert min(timing.preprocess_s, timing.network_s, timing.decode_s) >= 0
    assert timing.total_s == pytest.approx(timing.read_s + timing.preprocess_s + timing.network_s + timing.decode_s)

    # One detection per organ (absent ones included on request), labelled by class id = label value, with
    # top_k - 1 candidates inside the image; the absent list holds exactly the organs below the threshold.
    assert [d.class_id for d in result.detections] == list(range(1, len(tiny_predictor.config.class_names) + 1))
    threshold = tiny_predictor.config.presence.threshold
    assert result.presence_threshold == threshold
    assert all(d.present == (d.presence >= threshold) for d in result.detections)
    assert [(a.label, a.presence) for a in result.absent] == [
        (d.label, d.presence) for d in result.detections if not d.present
    ]
    assert [d.label for d in result.detections] == list(tiny_predictor.config.class_names)
    size = np.asarray(loaded.image.GetSize())
    for detection in result.detections:
        assert len(detection.candidates) == 2
        assert detection.source == "model"
        low, high = np.asarray(detection.voxel_bounds.min_ijk), np.asarray(detection.voxel_bounds.max_ijk_inclusive)
        assert np.all(low >= 0) and np.all(high < size) and np.all(low <= high)
        assert all(c.score <= detection.score for c in detection.candidates)


def test_segmentation_comes_back_in_the_input_geometry(tiny_predictor: Predictor, head_neck_case) -> None:
    ct_path, _ = head_neck_case
    loaded = read_image(ct_path)
    prediction = tiny_predictor.predict(loaded, top_k=1, segmentation=True)
    segmentation = prediction.segmentation
    assert segmentation is not None
    assert _same_geometry(segmentation, loaded.image)
    values = np.unique(sitk.GetArrayViewFromImage(segmentation))
    assert set(values.tolist()) <= set(range(len(tiny_predictor.config.class_names) + 1))


def _oblique(image: sitk.Image, degrees: float) -> sitk.Image:
    """The same voxels with the direction rotated about the third axis (an oblique acquisition)."""
    angle = np.deg2rad(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    rotated = sitk.Image(image)
    rotated.SetDirection((rotation @ np.asarray(image.GetDirection()).reshape(3, 3)).flatten().tolist())
    return rotated


@pytest.mark.parametrize("degrees", [0.0, 25.0])
def test_network_grid_label_map_maps_back_exactly(head_neck_case, degrees: float) -> None:
    """A label map taken to the network grid and back is unchanged when the grid has the image's resolution
    (PLI -> LPS is a pure axis permutation with flips, also for an oblique direction)."""
    _, label_path = head_neck_case
    label = _oblique(sitk.ReadImage(str(label_path)), degrees)
    config = PreprocessConfig(orientation="LPS", spatial_size=(128, 128, 128))
    network_labels = preprocess_label(label, config)
    volume = preprocess_image(sitk.Cast(label, sitk.sitkFloat32), config)
    back = network_grid_to_image(network_labels, volume, label)
    assert _same_geometry(back, label)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(label))


def test_label_map_of_a_scan_cropped_to_the_body_maps_back_exactly(head_neck_case) -> None:
    """With the crop to the body the network grid covers part of the scan: the organs (inside the body) come back
    exactly where they were, and the voxels outside the crop are background."""
    ct_path, label_path = head_neck_case
    image, label = sitk.ReadImage(str(ct_path)), sitk.ReadImage(str(label_path))
    native = sitk.DICOMOrient(image, "LPS").GetSpacing()
    config = PreprocessConfig(target_spacing_mm=native, body_hu_threshold=-500.0, body_margin_mm=10.0)
    volume = preprocess_image(image, config)
    assert np.prod(volume.network_shape) < 0.6 * np.prod(image.GetSize())  # the crop took off most of the air
    back = network_grid_to_image(preprocess_label(label, config, volume.grid), volume, label)
    assert _same_geometry(back, label)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(label))


def test_network_grid_label_map_at_lower_resolution_is_a_nearest_lookup(head_neck_case) -> None:
    """Each input voxel takes the label of the network voxel nearest to it through ``index_to_network``."""
    _, label_path = head_neck_case
    label = _oblique(sitk.ReadImage(str(label_path)), 10.0)
    config = PreprocessConfig(orientation="LPS", spatial_size=(48, 64, 40))
    volume = preprocess_image(sitk.Cast(label, sitk.sitkFloat32), config)
    network_labels = preprocess_label(label, config)
    back = sitk.GetArrayFromImage(network_grid_to_image(network_labels, volume, label))

    ijk = np.argwhere(np.ones(label.GetSize(), dtype=bool))
    network_index = ijk @ volume.index_to_network[:3, :3].T + volume.index_to_network[:3, 3]
    nearest = np.clip(np.floor(network_index + 0.5).astype(int), 0, np.asarray(config.spatial_size) - 1)
    expected = network_labels.numpy()[tuple(nearest.T)].reshape(label.GetSize()).transpose(2, 1, 0)
    # Only voxels exactly half-way between two network voxels may round the other way.
    assert np.mean(expected != back) < 1e-3


def test_cancel_is_honoured_between_stages(tiny_predictor: Predictor, small_abdomen_ct) -> None:
    loaded = read_image(small_abdomen_ct)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(JobCancelled):
        tiny_predictor.predict(loaded, cancel=cancel)

    cancel = threading.Event()
    seen: list[str] = []

    def cancel_at_network(stage: str, _: float) -> None:
        seen.append(stage)
        if stage == "network":
            cancel.set()

    with pytest.raises(JobCancelled):
        tiny_predictor.predict(loaded, progress=cancel_at_network, cancel=cancel)
    assert seen == ["preprocessing", "network"]


def test_unknown_model_folder_is_a_user_error(tmp_path) -> None:
    with pytest.raises(UserInputError):
        Predictor(tmp_path / "missing", device="cpu")


def test_predict_accepts_any_loaded_volume(tiny_predictor: Predictor) -> None:
    """A volume built in memory (no file) goes through the same path."""
    values = np.random.default_rng(0).integers(-1000, 1000, size=(20, 24, 16)).astype(np.int16)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((1.5, 1.0, 2.0))
    result = tiny_predictor.predict(LoadedImage(image=image, source="memory"), top_k=1, include_absent=True).result
    assert result.image.source == "memory"
    assert len(result.detections) == len(tiny_predictor.config.class_names)
    assert all(d.candidates == [] for d in result.detections)


def test_absent_organs_leave_the_detections_unless_requested(tiny_predictor: Predictor, small_abdomen_ct) -> None:
    loaded = read_image(small_abdomen_ct)
    everything = tiny_predictor.predict(loaded, top_k=1, include_absent=True).result
    default = tiny_predictor.predict(loaded, top_k=1).result
    assert [d.label for d in default.detections] == [d.label for d in everything.detections if d.present]
    assert default.absent == everything.absent
    assert all(d.present for d in default.detections)


def test_organ_subset_and_unknown_organs(tiny_predictor: Predictor, small_abdomen_ct) -> None:
    loaded = read_image(small_abdomen_ct)
    result = tiny_predictor.predict(loaded, top_k=1, include_absent=True, organs=["Mandible", "Brainstem"]).result
    assert [d.label for d in result.detections] == ["Brainstem", "Mandible"]  # model order, not request order
    with pytest.raises(UserInputError, match=r"unknown organ.*Liver.*this model detects Brainstem"):
        tiny_predictor.predict(loaded, organs=["Liver"])
    with pytest.raises(UserInputError, match="no organ named"):
        tiny_predictor.predict(loaded, organs=[])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.full((20, 24, 16), np.nan, dtype=np.float32), "NaN or infinite"),
        (np.full((20, 24, 16), -500, dtype=np.int16), "constant volume"),
        (np.linspace(2000, 3000, 20 * 24 * 16).reshape(20, 24, 16).astype(np.float32), "no tissue values"),
        (np.linspace(-1024, -900, 20 * 24 * 16).reshape(20, 24, 16).astype(np.float32), "no tissue values"),
    ],
)
def test_what_is_not_a_ct_of_a_person_is_refused(tiny_predictor: Predictor, values, message) -> None:
    image = sitk.GetImageFromArray(values)
    with pytest.raises(NotAPatientCTError, match=message):
        tiny_predictor.predict(LoadedImage(image=image, source="memory"))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize(
    ("body_hu_min", "body_hu_max", "tissue"),
    [(3.0, 7.5, True), (3.2, 7.5, False), (3.0, 6.9, False), (-1e6, 1e6, True)],
)
def test_tissue_bounds_count_alike_for_every_pixel_type(dtype, body_hu_min, body_hu_max, tissue) -> None:
    """Two voxels of 1000, at 3 and 7, are the tissue share needed; integer voxels are compared in their own type,
    with the same outcome as in floating point, also where a bound does not fit that type."""
    values = np.zeros(1000, dtype=dtype)
    values[[10, 20]] = [3, 7]
    image = sitk.GetImageFromArray(values.reshape(10, 10, 10))
    limits = CTContentLimits(body_hu_min=body_hu_min, body_hu_max=body_hu_max, min_body_fraction=0.002)
    if tissue:
        check_ct_content(image, limits=limits)
    else:
        with pytest.raises(NotAPatientCTError, match="no tissue values"):
            check_ct_content(image, limits=limits)
