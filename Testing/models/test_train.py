"""Real training runs of a tiny network on real CT (pt_201 at 32^3): loss goes down, resume is exact, DDP works."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from openkbp_dataset import CLASS_NAMES, write_dataset_json
from organdetr.config import (
    NEW_RUN_BODY_HU_THRESHOLD,
    NEW_RUN_WINDOW_FIT_ZOOM,
    DetectorConfig,
    SegmentationBranchConfig,
)
from organdetr.dataset import load_dataset_json
from organdetr.errors import UserInputError
from organdetr.optimizer import FINAL_LR_FRACTION, lr_factor
from organdetr.run_config import ConfigChoices, new_run_config
from organdetr.run_options import RunOptions
from organdetr.train import add_arguments
from organdetr.weight_averaging import averaged_model
from organdetr_backend.cli import main
from safetensors.torch import load_file


@pytest.fixture
def setup(tmp_path, data_dir, tiny_config: DetectorConfig) -> tuple[Path, Path]:
    """(dataset.json, config.json of the tiny network) in ``tmp_path``."""
    config_path = tmp_path / "tiny.json"
    config_path.write_text(tiny_config.to_json(), encoding="utf-8")
    return write_dataset_json(tmp_path, data_dir), config_path


def train(setup: tuple[Path, Path], output: Path, *extra: str) -> int:
    data, config = setup
    return main(["train", "--data", str(data), "--config", str(config), "--output", str(output), "--device", "cpu",
                 *extra])  # fmt: skip


def history(output: Path) -> list[dict]:
    return json.loads((output / "history.json").read_text(encoding="utf-8"))


def test_every_option_reaches_the_run_options_or_the_config_choices() -> None:
    """Each ``organdetr train`` option is a field of exactly one of the two dataclasses the command fills."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = {action.dest for action in parser._actions} - {"help"}
    run_fields = {field.name for field in dataclasses.fields(RunOptions)}
    config_fields = {field.name for field in dataclasses.fields(ConfigChoices)}
    assert not run_fields & config_fields
    assert options == run_fields | config_fields
    assert {"presence_levels", "train_only"} <= config_fields


def test_new_physical_space_runs_crop_to_the_body_and_fit_windows(setup) -> None:
    """A new run from a preset gets the shipped model's preprocessing contract; a legacy run and a given config keep
    theirs (configs written before the crop existed must not change meaning)."""
    description = load_dataset_json(setup[0])
    fresh = new_run_config(ConfigChoices(), "run", description).preprocess
    assert fresh.target_spacing_mm is not None
    assert (fresh.body_hu_threshold, fresh.window_fit_zoom) == (NEW_RUN_BODY_HU_THRESHOLD, NEW_RUN_WINDOW_FIT_ZOOM)
    legacy = new_run_config(ConfigChoices(target_spacing=["none"]), "run", description).preprocess
    assert (legacy.target_spacing_mm, legacy.body_hu_threshold, legacy.window_fit_zoom) == (None, None, 0.0)
    given = new_run_config(ConfigChoices(config=setup[1]), "run", description).preprocess
    assert given == DetectorConfig.from_json_file(setup[1]).preprocess


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_steps": 0}, "--max-steps must be at least 1"),
        ({"time_limit_minutes": 0.0}, "--time-limit-minutes must be positive"),
        ({"resume": True, "init_weights": "default"}, "cannot be combined with --resume"),
    ],
)
def test_run_options_refuse_impossible_runs(tmp_path, options, message) -> None:
    with pytest.raises(UserInputError, match=message):
        RunOptions(data=tmp_path / "dataset.json", output=tmp_path / "run", **options)


def test_learning_rate_warms_up_linearly_then_decays_to_its_final_fraction() -> None:
    assert [lr_factor(step, 4, 20) for step in range(4)] == [0.25, 0.5, 0.75, 1.0]
    decay = [lr_factor(step, 4, 20) for step in range(4, 21)]
    assert decay[0] == 1.0 and all(a > b for a, b in itertools.pairwise(decay))
    assert decay[-1] == pytest.approx(FINAL_LR_FRACTION) == lr_factor(100, 4, 20)


def test_training_steps_reduce_the_loss_and_write_the_run_folder(setup, tmp_path) -> None:
    output = tmp_path / "run"
    code = train(setup, output, "--epochs", "4", "--batch-size", "2", "--lr", "1e-3", "--warmup-steps", "1",
                 "--no-augment", "--val-every", "2")  # fmt: skip
    assert code == 0
    rows = history(output)
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    validated = [row for row in rows if "val_mAP" in row]
    assert [row["epoch"] for row in validated] == [2, 4]
    assert all(0.0 <= row["val_mAP"] <= 1.0 for row in validated)
    for folder in ("last", "best"):
        assert (output / folder / "model.safetensors").is_file()
        saved = DetectorConfig.from_json_file(output / folder / "config.json")
        assert saved.training_data["splits"] == {"training": 2, "validation": 1}
        assert saved.preprocess.spatial_size == (32, 32, 32)
    assert "val_mAP" in (output / "metrics.csv").read_text(encoding="utf-8").splitlines()[0]
    assert (output / "training_curves.png").stat().st_size > 1000
    # The trained checkpoint evaluates through the same command line.
    metrics_path = tmp_path / "metrics.json"
    assert main(["evaluate", "--model", str(output / "last"), "--data", str(setup[0]), "--output",
                 str(metrics_path), "--device", "cpu", "--quicklook", str(tmp_path / "look")]) == 0  # fmt: skip
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    assert set(metrics) >= {"mAP", "AP50", "AP75", "mAR", "mAP_nndet", "per_class", "per_case"}
    (case,) = metrics["per_case"]
    assert case["case"] == "openkbp_pt_201" and set(case["organs"]) == set(CLASS_NAMES)
    present = [organ for organ in case["organs"].values() if organ["present"]]
    assert present and all(0.0 <= organ["iou"] <= 1.0 for organ in present)  # small organs may vanish at 32^3
    assert all(organ["iou"] is None for organ in case["organs"].values() if not organ["present"])
    assert metrics["mAP"] == pytest.approx(rows[-1]["val_mAP"])  # validation in training is the same evaluation
    assert (tmp_path / "look" / "openkbp_pt_201.png").is_file()
    # A finished run folder is not overwritten by a new run.
    assert train(setup, output, "--epochs", "1") == 2


def test_data_on_device_trains_as_the_loader_workers_do(setup, tmp_path) -> None:
    """``--data-on-device`` makes the samples in the training process (loader workers would get device tensors
    they cannot hand over): the same samples, the same weights."""
    common = ("--epochs", "2", "--batch-size", "1", "--warmup-steps", "1", "--val-every", "5", "--workers", "2")
    assert train(setup, tmp_path / "workers", *common) == 0
    assert train(setup, tmp_path / "device", *common, "--data-on-device") == 0
    workers = load_file(tmp_path / "workers" / "last" / "model.safetensors")
    device = load_file(tmp_path / "device" / "last" / "model.safetensors")
    assert workers.keys() == device.keys()
    for name in workers:
        torch.testing.assert_close(device[name], workers[name], rtol=1e-5, atol=1e-6)
    assert [row["train_loss"] for row in history(tmp_path / "device")] == pytest.approx(
        [row["train_loss"] for row in history(tmp_path / "workers")], rel=1e-5
    )


@pytest.mark.parametrize("workers", ["0", "2"])  # 2: loader workers that live across epochs
def test_resume_continues_exactly(setup, tmp_path, workers) -> None:
    # 2 cases, batch 1: 2 steps per epoch; the reference stops mid-epoch 2, the other run is interrupted twice.
    common = ("--epochs", "3", "--batch-size", "1", "--warmup-steps", "2", "--val-every", "5", "--workers", workers)
    assert train(setup, tmp_path / "straight", *common, "--max-steps", "3") == 0
    assert train(setup, tmp_path / "split", *common, "--max-steps", "1") == 0
    assert train(setup, tmp_path / "split", "--resume", "--max-steps", "3", "--workers", workers) == 0
    straight = load_file(tmp_path / "straight" / "last" / "model.safetensors")
    split = load_file(tmp_path / "split" / "last" / "model.safetensors")
    assert straight.keys() == split.keys()
    for name in straight:
        torch.testing.assert_close(split[name], straight[name], rtol=1e-5, atol=1e-6)
    states = [
        torch.load(tmp_path / run / "last" / "training_state.pt", weights_only=True) for run in ("straight", "split")
    ]
    assert json.loads(states[0]["progress"])["global_step"] == json.loads(states[1]["progress"])["global_step"] == 3
    assert states[0]["scheduler"]["last_epoch"] == states[1]["scheduler"]["last_epoch"] == 3
    moments = [state["optimizer"]["state"][0]["exp_avg_sq"] for state in states]
    torch.testing.assert_close(moments[1], moments[0], rtol=1e-5, atol=1e-9)
    assert [row["step"] for row in history(tmp_path / "split")] == [1, 2, 3]


def test_ema_keeps_the_average_as_best_and_resumes_it_exactly(setup, tmp_path) -> None:
    """With --ema-decay, best/ holds the running average of the weights (not the trained ones in last/), the trained
    weights are validated beside it (val_raw_*), and an interrupted run resumes the average exactly."""
    common = ("--epochs", "2", "--batch-size", "1", "--lr", "1e-3", "--warmup-steps", "1", "--val-every", "1",
              "--no-augment", "--ema-decay", "0.5")  # fmt: skip
    assert train(setup, tmp_path / "straight", *common) == 0
    assert train(setup, tmp_path / "split", *common, "--max-steps", "3") == 0
    assert train(setup, tmp_path / "split", "--resume") == 0
    for run in ("straight", "split"):
        rows = history(tmp_path / run)
        assert all("val_raw_mAP" in row and "val_mAP" in row for row in rows if row["complete"])
        state = torch.load(tmp_path / run / "last" / "training_state.pt", weights_only=True)
        averaged = {k.removeprefix("module."): v for k, v in state["averaged_model"].items() if k != "n_averaged"}
        trained = load_file(tmp_path / run / "last" / "model.safetensors")
        # The last validation was the best or not; either way best/ never holds the trained weights.
        best = load_file(tmp_path / run / "best" / "model.safetensors")
        moved = [name for name in trained if not torch.equal(trained[name], averaged[name])]
        assert moved, "the average should lag behind the trained weights"
        assert any(not torch.equal(best[name], trained[name]) for name in moved)
        assert int(state["averaged_model"]["n_averaged"]) == 4  # one update per step
    # One epoch, one validation: best/ is the average at the run's end, exactly.
    assert train(setup, tmp_path / "one", *common[2:], "--epochs", "1") == 0
    state = torch.load(tmp_path / "one" / "last" / "training_state.pt", weights_only=True)["averaged_model"]
    best = load_file(tmp_path / "one" / "best" / "model.safetensors")
    assert all(torch.equal(best[name], state[f"module.{name}"]) for name in best)
    straight = torch.load(tmp_path / "straight" / "last" / "training_state.pt", weights_only=True)["averaged_model"]
    split = torch.load(tmp_path / "split" / "last" / "training_state.pt", weights_only=True)["averaged_model"]
    for name in straight:
        torch.testing.assert_close(split[name], straight[name], rtol=1e-5, atol=1e-6)


def test_ema_average_is_the_lerp_of_the_weights_and_keeps_frozen_weights_exactly() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)  # frozen, as --train-only leaves it
    frozen = model[0].weight.clone()
    average = averaged_model(model, 0.9)
    start = model[1].weight.detach().clone()
    with torch.no_grad():
        model[1].weight.add_(1.0)
    average.update_parameters(model)  # the first update copies the weights as they are
    with torch.no_grad():
        model[1].weight.add_(1.0)
    average.update_parameters(model)
    torch.testing.assert_close(average.module[1].weight, 0.9 * (start + 1.0) + 0.1 * (start + 2.0))
    assert torch.equal(average.module[0].weight, frozen)


def test_finished_runs_and_warm_up_longer_than_the_run_are_reported(setup, tmp_path, capsys) -> None:
    run = tmp_path / "short"
    assert train(setup, run, "--epochs", "1", "--batch-size", "2", "--warmup-steps", "5", "--no-augment") == 0
    assert "never reaches its peak" in capsys.readouterr().err
    steps = [row["step"] for row in history(run)]
    assert train(setup, run, "--resume") == 0
    assert "already finished its 1 epochs" in capsys.readouterr().err
    assert [row["step"] for row in history(run)] == steps  # nothing trained again


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_ddp_on_gloo(setup, tmp_path) -> None:
    data, config = setup
    output = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), "-m", "organdetr_backend.cli", "train", "--data", str(data),
               "--config", str(config), "--output", str(output), "--device", "cpu", "--epochs", "2",
               "--batch-size", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace", env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on cpu x2" in result.stderr
    rows = history(output)
    # 2 cases over 2 ranks with batch 1: one step per epoch, each rank a different case.
    assert [row["step"] for row in rows] == [1, 2]
    state = torch.load(output / "last" / "training_state.pt", weights_only=True)
    assert len(state["rng_cpu"]) == 2 and not torch.equal(state["rng_cpu"][0], state["rng_cpu"][1])


def test_bad_options_are_one_line_errors(setup, tmp_path, capsys) -> None:
    assert train(setup, tmp_path / "a", "--spatial-size", "30", "32", "32") == 2
    assert "--spatial-size" in capsys.readouterr().err
    assert train(setup, tmp_path / "b", "--resume") == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert train(setup, tmp_path / "c", "--dense-lambda", "1.5") == 2
    assert "--dense-lambda" in capsys.readouterr().err
    assert train(setup, tmp_path / "s", "--select-by", "Dice") == 2
    assert "--select-by Dice needs a segmentation branch" in capsys.readouterr().err
    assert train(setup, tmp_path / "d", "--lr-backbone", "0") == 2
    assert "--lr-backbone must be positive" in capsys.readouterr().err
    for decay in ("1", "-0.5"):
        assert train(setup, tmp_path / "f", "--ema-decay", decay) == 2
        assert "--ema-decay must be in [0, 1)" in capsys.readouterr().err
    for item in ("Liver=3", "Esophagus=0", "Esophagus", "Esophagus=x"):
        assert train(setup, tmp_path / "e", "--seg-class-weight", item) == 2
        assert f"--seg-class-weight {item!r}: expected ORGAN=WEIGHT" in capsys.readouterr().err


def test_backbone_learning_rate_is_its_own_option(setup, tmp_path) -> None:
    for name, extra, expected in (("same", (), 1e-3), ("own", ("--lr-backbone", "1e-4"), 1e-4)):
        assert train(setup, tmp_path / name, "--epochs", "1", "--no-augment", "--lr", "1e-3", *extra) == 0
        saved = DetectorConfig.from_json_file(tmp_path / name / "last" / "config.json").train
        assert (saved.lr, saved.lr_backbone) == (1e-3, expected)


def test_init_weights_fine_tunes_from_a_model_folder(setup, tmp_path) -> None:
    first = tmp_path / "first"
    assert train(setup, first, "--epochs", "1", "--batch-size", "2", "--no-augment") == 0
    tuned = tmp_path / "tuned"
    data, _ = setup
    code = main(["train", "--data", str(data), "--output", str(tuned), "--device", "cpu",
                 "--init-weights", str(first / "last"), "--epochs", "1", "--batch-size", "2", "--lr", "1e-5",
                 "--no-augment", "--seed", "1"])  # fmt: skip
    assert code == 0
    before, after = load_file(first / "last" / "model.safetensors"), load_file(tuned / "last" / "model.safetensors")
    assert before.keys() == after.keys()
    # Started from the given weights (a tiny learning rate moves them only a little), not from a fresh network
    # (which, with another seed, would differ everywhere).
    assert all(torch.allclose(before[name], after[name], atol=1e-3) for name in before)
    saved = DetectorConfig.from_json_file(tuned / "last" / "config.json")
    assert saved.preprocess == DetectorConfig.from_json_file(first / "last" / "config.json").preprocess
    assert saved.training_data["initialised_from"]["weights_sha256"]

    # Fine-tuning may add the segmentation branch and the quality head: new layers, everything else carried over.
    extended = tmp_path / "extended"
    code = main(["train", "--data", str(data), "--output", str(extended), "--device", "cpu",
                 "--init-weights", str(first / "last"), "--segmentation-branch", "--quality-head",
                 "--soft-tissue-channel", "--epochs", "1",
                 "--batch-size", "2", "--lr", "1e-5", "--no-augment"])  # fmt: skip
    assert code == 0
    grown = load_file(extended / "last" / "model.safetensors")
    added = set(grown) - set(before)
    assert added and all(name.startswith(("seg_branch.", "decoder.quality_head.")) for name in added)
    first_conv = "backbone.stages.0.0.conv.weight"  # its soft-tissue input channel is new
    assert grown[first_conv].shape[1] == 2 and torch.allclose(before[first_conv], grown[first_conv][:, :1], atol=1e-3)
    assert all(torch.allclose(before[name], grown[name], atol=1e-3) for name in before if name != first_conv)
    assert DetectorConfig.from_json_file(extended / "last" / "config.json").preprocess.extra_hu_windows == (
        (-160.0, 240.0),
    )

    # The fine stage added to that branch and fitted alone: new layers only, every other weight exactly as it was.
    fine = tmp_path / "fine"
    code = main(["train", "--data", str(data), "--output", str(fine), "--device", "cpu", "--init-weights",
                 str(extended / "last"), "--segmentation-stride", "1", "--train-only", "seg_branch.fine",
                 "--epochs", "1", "--batch-size", "2", "--lr", "1e-2", "--no-augment"])  # fmt: skip
    assert code == 0
    refined = load_file(fine / "last" / "model.safetensors")
    assert all(torch.equal(grown[name], refined[name]) for name in grown)
    assert {name.rsplit(".", 1)[0] for name in refined if name not in grown} == {
        "seg_branch.fine_units.0.0",
        "seg_branch.fine_units.1.0",
        "seg_branch.fine_classifier",
    }
    assert not torch.equal(refined["seg_branch.fine_classifier.weight"], torch.zeros(8, 8, 1, 1, 1))  # it trained
    assert DetectorConfig.from_json_file(fine / "last" / "config.json").model.segmentation_branch.output_stride == 1

    # A new presence head (pooling all 3 levels) fitted alone: every other weight stays exactly as it was.
    head = tmp_path / "head"
    code = main(["train", "--data", str(data), "--output", str(head), "--device", "cpu", "--init-weights",
                 str(first / "last"), "--presence-levels", "3", "--train-only", "presence_head", "--epochs", "1",
                 "--batch-size", "2", "--lr", "1e-2", "--no-augment"])  # fmt: skip
    assert code == 0
    fitted = load_file(head / "last" / "model.safetensors")
    assert all(torch.equal(before[name], fitted[name]) for name in before)
    assert {name for name in fitted if name not in before} == {
        f"presence_head.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")
    }
    assert (
        fitted["presence_head.0.weight"].shape[1]
        == 2 * 3 * DetectorConfig.from_json_file(head / "last" / "config.json").model.decoder.d_model
    )  # mean and max of each of the 3 levels


def test_init_weights_rejects_conflicting_options(setup, tmp_path, capsys) -> None:
    first = tmp_path / "first"
    assert train(setup, first, "--epochs", "1", "--batch-size", "2", "--no-augment") == 0
    assert train(setup, tmp_path / "x", "--init-weights", str(first / "last")) == 2
    assert "--init-weights fixes the network" in capsys.readouterr().err
    assert train(setup, first, "--resume", "--init-weights", str(first / "last")) == 2
    assert "cannot be combined with --resume" in capsys.readouterr().err


def test_physical_space_run_with_segmentation_branch_and_quality_head(tmp_path, data_dir, tiny_config) -> None:
    """Field-of-view windows from volumes larger than the window, then evaluation over several windows with box
    refinement from the branch's fine stage: the metrics carry presence, the query boxes' own figures and the
    branch's Dice per organ."""
    config = dataclasses.replace(
        tiny_config,
        model=dataclasses.replace(
            tiny_config.model,
            segmentation_branch=SegmentationBranchConfig(enabled=True, output_stride=1),
            quality_head=True,
        ),
        preprocess=dataclasses.replace(tiny_config.preprocess, target_spacing_mm=(16.0, 16.0, 10.0)),
    )
    config_path = tmp_path / "physical.json"
    config_path.write_text(config.to_json(), encoding="utf-8")
    setup = (write_dataset_json(tmp_path, data_dir), config_path)
    output = tmp_path / "run"
    assert train(setup, output, "--epochs", "2", "--batch-size", "2", "--warmup-steps", "1", "--select-by", "Dice",
                 "--oversample-rare-organs", "0.5", "--seg-class-weight", "Esophagus=30") == 0  # fmt: skip
    saved = DetectorConfig.from_json_file(output / "last" / "config.json")
    assert saved.train.oversample_rare_organs == 0.5 and saved.loss.seg_class_weights == {"Esophagus": 30.0}
    assert saved.train.select_by == "Dice"
    rows = history(output)
    row = rows[-1]
    assert {"train_loss_quality", "train_loss_seg_branch", "train_loss_seg_fine"} <= set(row) and "val_mAP" in row
    # best/ is the epoch with the highest mean Dice (the first one on a tie), whatever its mAP.
    best = json.loads((output / "best" / "metrics.json").read_text(encoding="utf-8"))
    dice = [r["val_Dice"] for r in rows]
    assert best["Dice"] == pytest.approx(max(dice)) and best["mAP"] == pytest.approx(
        rows[dice.index(max(dice))]["val_mAP"]
    )
    metrics_path = tmp_path / "metrics.json"
    assert main(["evaluate", "--model", str(output / "last"), "--data", str(setup[0]), "--output",
                 str(metrics_path), "--device", "cpu"]) == 0  # fmt: skip
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    assert set(metrics["query_boxes"]) >= {"mAP", "AP50", "per_class"}
    assert set(metrics["segmentation_dice"]) == set(config.class_names)
    assert metrics["presence"]["present_total"] == 7  # pt_201 annotates all 7 organs, all in the scan
    # Validation in training scores the query boxes: the refinement's calibration is fitted after training.
    assert row["val_mAP"] == pytest.approx(metrics["query_boxes"]["mAP"])

    # A run that trains only the decoder leaves the segmentation branch out (its loss cannot reach a trainable
    # weight): no branch losses in its rows, the decoder moved and nothing else did.
    decoder_only = tmp_path / "decoder"
    assert main(["train", "--data", str(setup[0]), "--output", str(decoder_only), "--device", "cpu", "--init-weights",
                 str(output / "last"), "--train-only", "decoder", "--epochs", "1", "--batch-size", "2",
                 "--lr", "1e-2", "--no-augment"]) == 0  # fmt: skip
    logged = history(decoder_only)[-1]
    assert "train_loss_seg" in logged and not {"train_loss_seg_branch", "train_loss_seg_fine"} & set(logged)
    before, after = (
        load_file(output / "last" / "model.safetensors"),
        load_file(decoder_only / "last" / "model.safetensors"),
    )
    assert all(torch.equal(before[name], after[name]) for name in before if not name.startswith("decoder."))
    assert not all(torch.equal(before[name], after[name]) for name in before if name.startswith("decoder."))
