"""dataset.json parsing, cached shared preprocessing, augmentation and ground-truth boxes on the real pt_201 case."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from openkbp_dataset import CLASS_NAMES, write_dataset_json
from organdetr.checkpoint import save_checkpoint
from organdetr.config import AugmentConfig, FieldOfViewConfig, PreprocessConfig
from organdetr.dataset import (
    MIN_OBJECT_VOXELS,
    CaseCache,
    DetectionDataset,
    collate,
    load_dataset_json,
    make_target,
)
from organdetr.errors import UserInputError
from organdetr.organ_detr import build_model
from organdetr_backend.cli import main

SMALL = PreprocessConfig(spatial_size=(48, 48, 40))


@pytest.fixture
def dataset_json(tmp_path, data_dir):
    return write_dataset_json(tmp_path, data_dir)


def test_parses_labels_splits_and_partial_annotations(dataset_json, data_dir) -> None:
    description = load_dataset_json(dataset_json, ("training", "validation"))
    assert description.class_names == CLASS_NAMES
    full, upper = description.splits["training"]
    assert full.image == (data_dir / "openkbp_pt_201" / "ct.nii.gz").resolve()
    assert upper.label == (dataset_json.parent / "pt_201_upper" / "oar_label.nii.gz").resolve()
    assert upper.annotated == ("Brainstem", "Mandible")
    assert description.splits["validation"][0].annotated == CLASS_NAMES  # no list: every organ annotated
    assert description.summary()["splits"] == {"training": 2, "validation": 1}
    description.check_class_names(CLASS_NAMES)
    with pytest.raises(UserInputError, match="do not match the model's classes"):
        description.check_class_names(("Liver", "Spleen"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"training": [{"image": "nowhere/ct.nii.gz", "label": "nowhere/label.nii.gz"}]}, "image file not found"),
        (
            {
                "training": [
                    {
                        "image": "pt_201_upper/ct.nii.gz",
                        "label": "pt_201_upper/oar_label.nii.gz",
                        "annotated": ["Brainstem", "Liver"],
                    }
                ]
            },
            r"annotated organs \['Liver'\] are not in 'labels'",
        ),
        ({"training": []}, "no 'training' split"),
        ({"labels": {"0": "background", "1": "Brainstem", "3": "Larynx"}}, "without gaps"),
        ({"training": [{"image": "pt_201_upper/ct.nii.gz"}]}, "must be an object with 'image' and 'label'"),
    ],
)
def test_bad_dataset_json_gives_clear_errors(tmp_path, data_dir, change, message) -> None:
    path = write_dataset_json(tmp_path, data_dir, **change)
    with pytest.raises(UserInputError, match=message):
        load_dataset_json(path)


def test_malformed_and_missing_json(tmp_path) -> None:
    broken = tmp_path / "dataset.json"
    broken.write_text('{"labels": {"0": "background",', encoding="utf-8")
    with pytest.raises(UserInputError, match="is not valid JSON"):
        load_dataset_json(broken)
    with pytest.raises(UserInputError, match="dataset file not found"):
        load_dataset_json(tmp_path / "missing.json")


def test_cli_reports_bad_dataset_in_one_line(tmp_path, data_dir, capsys) -> None:
    path = write_dataset_json(tmp_path, data_dir, training=[{"image": "x.nii.gz", "label": "y.nii.gz"}])
    code = main(["train", "--data", str(path), "--output", str(tmp_path / "run"), "--device", "cpu"])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.startswith("organdetr train: error:") and "image file not found" in error
    assert "\n" not in error


def test_boxes_from_real_label_map_match_numpy_extent(dataset_json) -> None:
    description = load_dataset_json(dataset_json)
    case = CaseCache(CLASS_NAMES, PreprocessConfig()).get(description.splits["training"][0])
    label_map = case.label_map.numpy()
    target = make_target(case.label_map, case.annotated)
    assert target["labels"].tolist() == list(range(7))  # pt_201 has all seven organs
    shape = np.array(label_map.shape)
    for k, box in zip(target["labels"].tolist(), target["boxes"], strict=True):
        voxels = np.argwhere(label_map == k + 1)
        low, high = voxels.min(axis=0), voxels.max(axis=0) + 1  # voxel-edge convention
        np.testing.assert_allclose(box[:3].numpy(), (low + high) / 2 / shape, atol=1e-6)
        np.testing.assert_allclose(box[3:].numpy(), (high - low) / shape, atol=1e-6)
    # pt_201 is 128^3 with ~5.4 x 5.4 x 3 mm voxels in PLI; the network grid is LPS at the same size.
    np.testing.assert_allclose(sorted(case.network_spacing_mm), [3.0, 5.422, 5.422], atol=0.01)


def test_partial_case_and_disk_cache(dataset_json, tmp_path) -> None:
    description = load_dataset_json(dataset_json)
    cache = CaseCache(CLASS_NAMES, SMALL, tmp_path / "cache")
    upper = cache.get(description.splits["training"][1])
    assert upper.image.shape == (1, 48, 48, 40)
    assert upper.annotated.tolist() == [True, False, False, False, False, False, True]
    assert set(torch.unique(upper.label_map).tolist()) == {0, 1, 7}
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    reread = CaseCache(CLASS_NAMES, SMALL, tmp_path / "cache").get(description.splits["training"][1])
    assert torch.equal(reread.image, upper.image) and torch.equal(reread.label_map, upper.label_map)
    np.testing.assert_array_equal(reread.index_to_network, upper.index_to_network)
    other = CaseCache(CLASS_NAMES, replace(SMALL, spatial_size=(32, 32, 32)), tmp_path / "cache")
    assert other.get(description.splits["training"][1]).image.shape == (1, 32, 32, 32)  # new settings, new entry
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_augmentation_recomputes_boxes_and_is_reproducible(dataset_json) -> None:
    description = load_dataset_json(dataset_json)
    cache = CaseCache(CLASS_NAMES, SMALL)
    cases = [cache.get(record) for record in description.splits["training"]]
    always = replace(AugmentConfig(), affine_probability=1.0)
    dataset = DetectionDataset(cases, SMALL.spatial_size, augment=always, seed=3)
    image, target, name = dataset[0]
    assert name == "openkbp_pt_201"
    again, _, _ = dataset[0]
    assert torch.equal(image, again)  # a pure function of (seed, epoch, index)
    dataset.set_epoch(1)
    moved, moved_target, _ = dataset[0]
    assert not torch.equal(moved, image)
    # The epoch can travel with the key instead (loader workers that outlive an epoch): the same samples.
    assert torch.equal(dataset[(0, 0)][0], image) and torch.equal(dataset[(1, 0)][0], moved)
    assert image.shape == cases[0].image.shape and image.dtype == torch.float32
    for sample_target in (target, moved_target):
        labels, boxes = sample_target["labels"], sample_target["boxes"]
        label_map = sample_target["label_map"]
        for k, box in zip(labels.tolist(), boxes, strict=True):
            voxels = np.argwhere(label_map.numpy() == k + 1)
            assert len(voxels) >= MIN_OBJECT_VOXELS
            low = voxels.min(axis=0) / np.array(label_map.shape)
            np.testing.assert_allclose((box[:3] - box[3:] / 2).numpy(), low, atol=1e-6)
    assert not torch.equal(target["boxes"], moved_target["boxes"])
    images, targets, names = collate([dataset[0], dataset[1]])
    assert images.shape == (2, 1, 48, 48, 40) and len(targets) == 2 and names[1] == "pt_201_upper"
    assert targets[1]["annotated"].tolist() == [True, False, False, False, False, False, True]


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_samples_made_on_the_device_are_the_loader_workers_samples(dataset_json, device) -> None:
    """``--data-on-device``: cases held on the training device, windows cut and augmented there; the same random
    choices as on the CPU, so the same samples (to float rounding on another device), targets on the CPU but the
    label map, which the segmentation losses read on the device."""
    description = load_dataset_json(dataset_json)
    cache = CaseCache(CLASS_NAMES, SMALL)
    cases = [cache.get(record) for record in description.splits["training"]]
    options = {"augment": AugmentConfig(affine_probability=1.0), "field_of_view": FieldOfViewConfig(), "seed": 5}
    on_cpu = DetectionDataset(cases, SMALL.spatial_size, **options)
    on_device = DetectionDataset(cases, SMALL.spatial_size, **options, device=torch.device(device))
    assert all(case.image.device.type == device and case.image.dtype == torch.float16 for case in on_device.cases)
    for key in [(0, 0), (0, 1), (1, 0), (3, 1)]:
        (image, target, name), (moved, moved_target, moved_name) = on_cpu[key], on_device[key]
        assert moved.device.type == moved_target["label_map"].device.type == device and moved_name == name
        torch.testing.assert_close(moved.cpu(), image, atol=1e-4, rtol=0)
        assert torch.equal(moved_target["label_map"].cpu(), target["label_map"])
        for field in ("labels", "boxes", "annotated"):
            assert moved_target[field].device.type == "cpu" and torch.equal(moved_target[field], target[field])


def test_evaluate_rejects_dataset_with_other_organs(tmp_path, data_dir, capsys, tiny_config) -> None:
    labels = {"0": "background", **{str(i): f"organ{i}" for i in range(1, 8)}}
    path = write_dataset_json(tmp_path, data_dir, labels=labels)
    model_dir = save_checkpoint(tmp_path / "model", build_model(tiny_config.model), tiny_config)
    code = main(["evaluate", "--model", str(model_dir), "--data", str(path), "--output", str(tmp_path / "m.json")])
    assert code == 2
    assert "do not match the model's classes" in capsys.readouterr().err


def test_label_map_on_another_grid_is_refused(dataset_json, tmp_path) -> None:
    import SimpleITK as sitk
    from organdetr.dataset import preprocess_case

    record = load_dataset_json(dataset_json).splits["training"][0]
    label = sitk.ReadImage(str(record.label))
    label.SetOrigin([value + 2.0 for value in label.GetOrigin()])  # same size, voxels 3.5 mm away
    shifted = tmp_path / "shifted_label.nii.gz"
    sitk.WriteImage(label, str(shifted))
    with pytest.raises(UserInputError, match=r"label map's grid differs from the image's.*origin"):
        preprocess_case(replace(record, label=shifted), CLASS_NAMES, SMALL)
