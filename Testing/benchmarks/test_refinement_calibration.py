"""The refinement calibration end to end: a real (tiny, untrained) model with a segmentation branch on real CT cases."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from organdetr.checkpoint import load_checkpoint, save_checkpoint
from organdetr.config import (
    BackboneConfig,
    BoxRefinementConfig,
    DecoderConfig,
    DetectorConfig,
    ModelConfig,
    MSAConfig,
    PreprocessConfig,
    SegmentationBranchConfig,
)
from organdetr.organ_detr import build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
import refinement_calibration
from openkbp_dataset import write_dataset_json


def _tiny_network(branch: bool) -> ModelConfig:
    return ModelConfig(
        num_classes=7,
        backbone=BackboneConfig(stage_channels=(8, 16, 32, 32), fpn_channels=32),
        msa=MSAConfig(num_heads=2, depth=1, ffn_dim=64),
        decoder=DecoderConfig(d_model=32, num_heads=2, ffn_dim=64, num_layers=2, num_queries=20),
        segmentation_branch=SegmentationBranchConfig(enabled=branch),
    )


def test_calibration_writes_a_weighted_rule_and_keeps_the_weights(tmp_path, data_dir, monkeypatch) -> None:
    model_config = _tiny_network(branch=True)
    config = DetectorConfig(
        model=model_config,
        preprocess=PreprocessConfig(spatial_size=(32, 32, 32)),
        refinement=BoxRefinementConfig(min_iou=0.0),  # an untrained branch: trust any component
    )
    torch.manual_seed(0)
    folder = save_checkpoint(tmp_path / "model", build_model(model_config), config)
    weights = (folder / "model.safetensors").read_bytes()
    data = write_dataset_json(tmp_path, data_dir)
    arguments = ["x", "--model", str(folder), "--data", str(data), "--min-organs", "1", "--write-config"]
    monkeypatch.setattr(sys, "argv", arguments)
    assert refinement_calibration.main() == 0

    refinement = load_checkpoint(folder).config.refinement
    assert refinement.enabled and refinement.box_rule == "weighted"
    assert refinement.component_weights and set(refinement.component_weights) <= set(config.class_names)
    assert set(refinement.corner_bias_voxels) == set(refinement.component_weights)
    assert all(len(w) == 6 and all(0.0 <= x <= 1.0 for x in w) for w in refinement.component_weights.values())
    assert (folder / "model.safetensors").read_bytes() == weights


def test_a_model_without_a_branch_is_refused(tmp_path, data_dir, monkeypatch) -> None:
    model_config = _tiny_network(branch=False)
    config = DetectorConfig(model=model_config, preprocess=PreprocessConfig(spatial_size=(32, 32, 32)))
    folder = save_checkpoint(tmp_path / "model", build_model(model_config), config)
    data = write_dataset_json(tmp_path, data_dir)
    monkeypatch.setattr(sys, "argv", ["x", "--model", str(folder), "--data", str(data)])
    with pytest.raises(SystemExit, match="no segmentation branch"):
        refinement_calibration.main()
