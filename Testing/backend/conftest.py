"""Backend fixtures: a REAL checkpoint of a tiny randomly initialised detector (boxes meaningless, everything else
real: safetensors loading, preprocessing, network, decoding, geometry, schema)."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_CLASS_NAMES = ("Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible")


def tiny_detector_config():
    """A DetectorConfig small enough to run in well under a second per volume on one CPU core."""
    from organdetr.config import (
        BackboneConfig,
        DecoderConfig,
        DetectorConfig,
        ModelConfig,
        MSAConfig,
        PreprocessConfig,
    )

    return DetectorConfig(
        name="tiny-test",
        version="0.0.1",
        class_names=TINY_CLASS_NAMES,
        model=ModelConfig(
            num_classes=len(TINY_CLASS_NAMES),
            backbone=BackboneConfig(stage_channels=(4, 8, 16, 16), fpn_channels=16),
            msa=MSAConfig(num_heads=2, depth=1, ffn_dim=32),
            decoder=DecoderConfig(d_model=16, num_heads=2, ffn_dim=32, num_layers=1, num_points=2, num_queries=12),
        ),
        preprocess=PreprocessConfig(spatial_size=(32, 32, 32)),
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with model.safetensors + config.json of the tiny detector."""
    import torch
    from organdetr.checkpoint import save_checkpoint
    from organdetr.organ_detr import build_model

    config = tiny_detector_config()
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("tiny_checkpoint"), build_model(config.model), config)


@pytest.fixture(scope="session")
def tiny_predictor(tiny_checkpoint: Path):
    """The tiny detector loaded once on the CPU."""
    from organdetr_backend.predictor import Predictor

    return Predictor(tiny_checkpoint, device="cpu")
