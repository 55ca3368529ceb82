"""Fixtures for the detection-head tests: network-shaped outputs built from random tensors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch


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
