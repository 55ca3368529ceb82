"""Fixtures for the detection-head tests: network-shaped outputs from random tensors, a tiny real network config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import SimpleITK as sitk
import torch
from organdetr.config import BackboneConfig, DecoderConfig, DetectorConfig, ModelConfig, MSAConfig, PreprocessConfig
from organdetr.preprocess import PreprocessedVolume, preprocess_image, preprocess_label


def random_boxes(count: int, generator: torch.Generator) -> torch.Tensor:
    """``[count, 6]`` normalised center-size boxes that lie inside the unit cube."""
    size = 0.05 + 0.4 * torch.rand(count, 3, generator=generator)
    center = size / 2 + (1 - size) * torch.rand(count, 3, generator=generator)
    return torch.cat([center, size], dim=1)


@pytest.fixture
def make_boxes() -> Callable[[int, torch.Generator], torch.Tensor]:
    """``make_boxes(count, generator)`` -> random normalised boxes inside the unit cube."""
    return random_boxes


@pytest.fixture
def make_outputs() -> Callable[..., dict[str, Any]]:
    """``make_outputs(batch, queries, classes, aux_layers=0, seed=0)`` -> outputs dict of the network contract."""

    def make(batch: int, queries: int, classes: int, aux_layers: int = 0, seed: int = 0) -> dict[str, Any]:
        generator = torch.Generator().manual_seed(seed)

        def layer() -> dict[str, torch.Tensor]:
            boxes = torch.stack([random_boxes(queries, generator) for _ in range(batch)])
            return {"pred_logits": torch.randn(batch, queries, classes + 1, generator=generator), "pred_boxes": boxes}

        outputs: dict[str, Any] = layer()
        outputs["aux_outputs"] = [layer() for _ in range(aux_layers)]
        return outputs

    return make


@pytest.fixture
def make_targets() -> Callable[..., list[dict[str, torch.Tensor]]]:
    """``make_targets(counts, classes, seed=0)`` -> one target per entry of ``counts`` with that many organs."""

    def make(counts: list[int], classes: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
        generator = torch.Generator().manual_seed(seed)
        return [
            {"labels": torch.randperm(classes, generator=generator)[:count], "boxes": random_boxes(count, generator)}
            for count in counts
        ]

    return make


@pytest.fixture
def tiny_config() -> DetectorConfig:
    """The default 7 head-and-neck organs with a network small enough for CPU tests at 32^3 input."""
    model = ModelConfig(
        num_classes=7,
        backbone=BackboneConfig(stage_channels=(8, 16, 32, 32), fpn_channels=32),
        msa=MSAConfig(num_heads=2, depth=1, ffn_dim=64),
        decoder=DecoderConfig(d_model=32, num_heads=2, ffn_dim=64, num_layers=2, num_queries=20),
    )
    return DetectorConfig(model=model, preprocess=PreprocessConfig(spatial_size=(32, 32, 32)))


@pytest.fixture
def head_neck_volume(head_neck_case, tiny_config) -> tuple[PreprocessedVolume, torch.Tensor]:
    """OpenKBP pt_201 CT and organ label map preprocessed to the tiny network's 32^3 grid."""
    ct_path, label_path = head_neck_case
    volume = preprocess_image(sitk.ReadImage(str(ct_path)), tiny_config.preprocess)
    label_map = preprocess_label(sitk.ReadImage(str(label_path)), tiny_config.preprocess)
    return volume, label_map
