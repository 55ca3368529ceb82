"""Training packs: a dataset.json's preprocessed cases in one file, trained from without NIfTI files or SimpleITK."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from openkbp_dataset import write_dataset_json
from organdetr.checkpoint import save_checkpoint
from organdetr.config import DetectorConfig
from organdetr.dataset import load_dataset_json
from organdetr.errors import UserInputError
from organdetr.organ_detr import build_model
from organdetr.run_config import SOFT_TISSUE_HU
from organdetr.training_pack import IMAGE_LEVELS, read_training_pack
from organdetr_backend.cli import main

# Runs the command line in a process where importing SimpleITK fails, as on a machine without it.
WITHOUT_ITK = (
    "import sys; sys.modules['SimpleITK'] = None; from organdetr_backend.cli import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.fixture
def packed(tmp_path, data_dir, tiny_config: DetectorConfig) -> tuple[Path, Path, Path]:
    """(dataset.json, the tiny model's folder, the pack made from both)."""
    data = write_dataset_json(tmp_path, data_dir)
    model = save_checkpoint(tmp_path / "tiny", build_model(tiny_config.model), tiny_config)
    pack = tmp_path / "pack.npz"
    assert main(["pack", "--data", str(data), "--output", str(pack), "--model", str(model)]) == 0
    return data, model, pack


def test_a_pack_holds_the_cases_that_its_dataset_json_gives(packed, tiny_config) -> None:
    data, _, pack_path = packed
    pack = read_training_pack(pack_path)
    description = load_dataset_json(data, ["training", "validation"])
    assert pack.class_names == description.class_names and pack.preprocess == tiny_config.preprocess
    assert pack.splits == {split: tuple(r.name for r in records) for split, records in description.splits.items()}
    assert pack.median_spacing("LPS") == description.median_spacing("LPS")
    for split in ("training", "validation"):
        from_pack = pack.preprocessed_cases(split, tiny_config.preprocess)
        from_json = description.preprocessed_cases(split, tiny_config.preprocess)
        for packed_case, case in zip(from_pack, from_json, strict=True):
            assert packed_case.name == case.name
            assert torch.equal(packed_case.label_map, case.label_map)
            assert torch.equal(packed_case.annotated, case.annotated)
            assert (packed_case.index_to_network == case.index_to_network).all()
            assert (packed_case.network_spacing_mm == case.network_spacing_mm).all()
            # 8 bits over the intensity window: within half a level (plus float16 rounding) of the exact intensities.
            difference = (packed_case.image.float() - case.image.float()).abs().max()
            assert 0 < difference <= 0.5 / IMAGE_LEVELS + 1e-3
    # The upper case annotates two organs only: the pack keeps that.
    assert pack.preprocessed_cases("training", tiny_config.preprocess)[1].annotated.sum() == 2


def test_training_from_a_pack_needs_no_simpleitk(packed, tmp_path) -> None:
    _, model, pack = packed
    output = tmp_path / "run"
    command = [sys.executable, "-c", WITHOUT_ITK, "train", "--data", str(pack), "--config", str(model / "config.json"),
               "--output", str(output), "--device", "cpu", "--epochs", "2", "--batch-size", "2", "--val-every", "2",
               "--threads", "1"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((output / "history.json").read_text(encoding="utf-8"))
    assert [row["step"] for row in rows] == [1, 2] and "val_mAP" in rows[-1]
    saved = DetectorConfig.from_json_file(output / "last" / "config.json")
    assert saved.training_data["training_pack"] == str(pack.resolve())
    assert saved.training_data["splits"] == {"training": 2, "validation": 1}
    # Reading NIfTI does need it: the same process refuses the dataset.json clearly rather than half-working.
    failed = subprocess.run([*command[:3], "pack", "--data", str(tmp_path / "dataset.json"), "--output",
                             str(tmp_path / "again.npz"), "--model", str(model)],
                            capture_output=True, encoding="utf-8", errors="replace", timeout=300)  # fmt: skip
    assert failed.returncode != 0 and "SimpleITK" in failed.stderr
    assert not (tmp_path / "again.npz").exists()


def test_a_soft_tissue_pack_trains_a_soft_tissue_run(packed, tmp_path, capsys) -> None:
    """``organdetr pack --soft-tissue-channel`` holds the preprocessing that ``train --soft-tissue-channel`` makes of
    the model's; the plain pack is refused by such a run with a hint to it."""
    data, model, plain = packed
    soft = tmp_path / "soft.npz"
    assert (
        main(["pack", "--data", str(data), "--output", str(soft), "--model", str(model), "--soft-tissue-channel"]) == 0
    )
    assert read_training_pack(soft).preprocess.extra_hu_windows == (SOFT_TISSUE_HU,)
    run = ["train", "--init-weights", str(model), "--soft-tissue-channel", "--device", "cpu", "--epochs", "1",
           "--batch-size", "2", "--val-every", "5", "--threads", "1"]  # fmt: skip
    assert main([*run, "--data", str(plain), "--output", str(tmp_path / "refused")]) == 2
    assert "--soft-tissue-channel" in capsys.readouterr().err
    assert main([*run, "--data", str(soft), "--output", str(tmp_path / "run")]) == 0
    saved = DetectorConfig.from_json_file(tmp_path / "run" / "last" / "config.json")
    assert saved.model.backbone.in_channels == 2


def test_evaluation_from_a_pack_matches_the_dataset_json(packed, tmp_path, capsys) -> None:
    """``organdetr evaluate`` takes a pack as train does: the same cases, the same figures to within the 8-bit
    quantisation of its images; a split the pack lacks is one line."""
    data, model, pack = packed
    figures = {}
    for name, source in (("json", data), ("pack", pack)):
        output = tmp_path / f"{name}.json"
        assert main(["evaluate", "--model", str(model), "--data", str(source), "--split", "training", "--output",
                     str(output), "--device", "cpu"]) == 0  # fmt: skip
        figures[name] = json.loads(output.read_text(encoding="utf-8"))
    assert figures["pack"]["data"] == str(pack.resolve()) and figures["pack"]["num_images"] == 2
    assert [case["case"] for case in figures["pack"]["per_case"]] == [
        case["case"] for case in figures["json"]["per_case"]
    ]
    assert figures["pack"]["mAR"] == pytest.approx(figures["json"]["mAR"], abs=0.05)
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model), "--data", str(pack), "--split", "test", "--output",
                 str(tmp_path / "test.json"), "--device", "cpu"]) == 2  # fmt: skip
    error = capsys.readouterr().err
    assert "holds no test split (it holds ['training', 'validation'])" in error and error.count("\n") == 1
    assert not (tmp_path / "test.json").exists()


def test_a_run_with_other_preprocessing_is_refused(packed, tmp_path, capsys) -> None:
    _, model, pack = packed
    code = main(["train", "--data", str(pack), "--config", str(model / "config.json"), "--output",
                 str(tmp_path / "run"), "--spatial-size", "64", "64", "64", "--device", "cpu"])  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err
    assert "preprocessed differently from this run: spatial_size (32, 32, 32) (run: (64, 64, 64))" in error
    assert error.count("\n") == 1


def test_files_that_are_not_packs_are_one_line_errors(packed, tmp_path, capsys) -> None:
    _, model, pack = packed
    other_zip = tmp_path / "other.npz"
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("notes.txt", "hello")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(pack.read_bytes()[: pack.stat().st_size // 2])
    for path, message in [(other_zip, "not an organdetr training pack"), (truncated, "cannot read training pack")]:
        assert main(["train", "--data", str(path), "--output", str(tmp_path / "run"), "--device", "cpu"]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1
        assert any(part in error for part in message.split("|")), error
    with pytest.raises(UserInputError, match="not a readable organdetr training pack"):
        broken = tmp_path / "broken.npz"
        with zipfile.ZipFile(pack) as source, zipfile.ZipFile(broken, "w") as target:
            for name in source.namelist():
                if name != "training/1/label_map.npy":
                    target.writestr(name, source.read(name))
        read_training_pack(broken)
    # A member that is not an array (a damaged pack): one line when training reads it.
    damaged = tmp_path / "damaged.npz"
    with zipfile.ZipFile(pack) as source, zipfile.ZipFile(damaged, "w") as target:
        for name in source.namelist():
            target.writestr(name, b"not an array" if name == "training/1/image.npy" else source.read(name))
    assert main(["train", "--data", str(damaged), "--config", str(model / "config.json"), "--output",
                 str(tmp_path / "run"), "--device", "cpu"]) == 2  # fmt: skip
    error = capsys.readouterr().err
    assert "a case's data is damaged" in error and error.count("\n") == 1
    assert main(["pack", "--data", str(tmp_path / "dataset.json"), "--output", str(tmp_path / "p.zip"),
                 "--model", str(model)]) == 2  # fmt: skip
    assert "a training pack is a .npz file" in capsys.readouterr().err
    assert not (tmp_path / "p.zip").exists()
    # An existing file is not replaced without --overwrite: the pack keeps its bytes.
    before = pack.read_bytes()
    assert main(["pack", "--data", str(tmp_path / "dataset.json"), "--output", str(pack), "--model", str(model)]) == 2
    assert "already exists" in capsys.readouterr().err and pack.read_bytes() == before
    assert main(["pack", "--data", str(tmp_path / "dataset.json"), "--output", str(tmp_path / "missing" / "p.npz"),
                 "--model", str(model)]) == 2  # fmt: skip
    assert "does not exist" in capsys.readouterr().err
