"""The 2D detector run on every view: a small CenterNet-style network behind the :class:`ViewDetector` interface.

Each organ appears at most once per view, so the detector predicts, per organ, a centre heatmap (Gaussian peaks at
the silhouette box centres, focal loss as in CenterNet), the box size in pixels (log) and the centre's sub-cell
offset, both per organ (organ centres share cells on a coarse map, and a shared size would have to fit them all);
decoding takes each organ's highest peak in each view. Its feature map is what the 3D queries and the
decoder read. Inputs are line-integral views (:mod:`organdetr.xray.render`), ``[N, 1, rows, columns]``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Heatmap peaks are Gaussians with this standard deviation per feature-map cell of box size (CenterNet uses a radius
# from the box size; a fixed fraction is simpler and keeps small organs peaked).
SIGMA_PER_BOX_CELL = 0.15
MIN_SIGMA_CELLS = 0.5


@dataclass
class ViewOutputs:
    """Per view: organ heatmap logits ``[N, K, h, w]``, log box sizes in pixels ``[N, K, 2, h, w]``, centre offsets
    in cells ``[N, K, 2, h, w]`` and features ``[N, C, h, w]``; the map has one cell per ``stride`` pixels."""

    heatmap_logits: Tensor
    log_sizes: Tensor
    offsets: Tensor
    features: Tensor
    stride: int


@dataclass
class ViewDetections:
    """Each organ's best peak in each view: ``boxes`` ``[N, K, 4]`` (pixels), ``scores`` ``[N, K]``, the peak cells'
    ``features`` ``[N, K, C]`` and flat cell ``indices`` ``[N, K]``."""

    boxes: Tensor
    scores: Tensor
    features: Tensor
    indices: Tensor


class ViewDetector(Protocol):
    """What the MV2D network needs from a 2D detector."""

    feature_channels: int

    def __call__(self, images: Tensor) -> ViewOutputs: ...


@dataclass(frozen=True)
class CenterNetConfig:
    num_classes: int = 7
    stage_channels: tuple[int, ...] = (16, 32, 64)  # one stride-2 stage each: output stride 2 ** len
    feature_channels: int = 64


def _stage(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
        nn.GroupNorm(min(8, out_channels), out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.GroupNorm(min(8, out_channels), out_channels),
        nn.ReLU(inplace=True),
    )


class CenterNetViewDetector(nn.Module):
    def __init__(self, config: CenterNetConfig = CenterNetConfig()) -> None:
        super().__init__()
        self.config = config
        self.feature_channels = config.feature_channels
        channels = (1, *config.stage_channels)
        self.stages = nn.Sequential(*(_stage(a, b) for a, b in itertools.pairwise(channels)))
        self.neck = nn.Conv2d(channels[-1], config.feature_channels, 1)
        self.heatmap = nn.Conv2d(config.feature_channels, config.num_classes, 1)
        self.size = nn.Conv2d(config.feature_channels, 2 * config.num_classes, 1)
        self.offset = nn.Conv2d(config.feature_channels, 2 * config.num_classes, 1)
        # CenterNet's prior: start with heatmaps near 0.01 so the focal loss is not swamped by background cells.
        nn.init.constant_(self.heatmap.bias, -math.log(99.0))

    @property
    def stride(self) -> int:
        return 2 ** len(self.config.stage_channels)

    def forward(self, images: Tensor) -> ViewOutputs:
        features = F.relu(self.neck(self.stages(images)))
        per_organ = (self.config.num_classes, 2)
        sizes, offsets = self.size(features).unflatten(1, per_organ), self.offset(features).unflatten(1, per_organ)
        return ViewOutputs(self.heatmap(features), sizes, offsets, features, self.stride)


def heatmap_targets(boxes: Tensor, shape: tuple[int, int], stride: int) -> dict[str, Tensor]:
    """CenterNet targets from boxes ``[N, K, 4]`` (pixels, NaN where absent) on an ``h x w`` map: Gaussian heatmaps
    ``[N, K, h, w]``, and at each box centre's cell the log size and offset targets with a mask ``[N, K]``."""
    height, width = shape
    present = torch.isfinite(boxes).all(dim=-1)
    safe = torch.where(present[..., None], boxes, torch.zeros_like(boxes))
    # Stride-2 convolutions with padding 1 centre cell i on pixel 2 i: cell coordinates are pixels / stride.
    centre = (safe[..., :2] + safe[..., 2:]) / 2 / stride
    size = (safe[..., 2:] - safe[..., :2]).clamp(min=1.0)
    cell = centre.round().clamp(min=torch.zeros(2), max=torch.tensor([width - 1.0, height - 1.0]))
    sigma = (SIGMA_PER_BOX_CELL * size / stride).clamp(min=MIN_SIGMA_CELLS)
    ys = torch.arange(height, dtype=boxes.dtype)[:, None]
    xs = torch.arange(width, dtype=boxes.dtype)[None, :]
    gaussian = torch.exp(
        -((xs - centre[..., 0, None, None]) ** 2) / (2 * sigma[..., 0, None, None] ** 2)
        - (ys - centre[..., 1, None, None]) ** 2 / (2 * sigma[..., 1, None, None] ** 2)
    )
    peak = torch.zeros_like(gaussian)
    flat_index = (cell[..., 1] * width + cell[..., 0]).long()
    peak.view(*peak.shape[:2], -1).scatter_(-1, flat_index[..., None], 1.0)  # exactly 1 at the centre's cell
    heatmap = torch.where(present[..., None, None], torch.maximum(gaussian, peak), torch.zeros_like(gaussian))
    return {
        "heatmap": heatmap.float(),
        "index": flat_index,
        "log_size": size.log().float(),
        "offset": (centre - cell).float(),
        "mask": present,
    }


def centernet_loss(outputs: ViewOutputs, boxes: Tensor) -> dict[str, Tensor]:
    """Focal loss on the heatmaps (CenterNet, alpha 2, beta 4) and L1 on sizes and offsets at the centres, each
    normalised by the number of boxes; ``boxes`` ``[N, K, 4]`` pixels, NaN where absent."""
    device = outputs.heatmap_logits.device
    shape = tuple(outputs.heatmap_logits.shape[-2:])
    targets = {key: value.to(device) for key, value in heatmap_targets(boxes.cpu(), shape, outputs.stride).items()}
    probability = outputs.heatmap_logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    positive = targets["heatmap"] >= 1.0
    positive_loss = -((1 - probability) ** 2) * probability.log() * positive
    negative_loss = -((1 - targets["heatmap"]) ** 4) * probability**2 * (1 - probability).log() * ~positive
    count = max(float(targets["mask"].sum()), 1.0)
    mask = targets["mask"]

    def at_centres(map_: Tensor) -> Tensor:
        return per_organ_at(map_, targets["index"])

    return {
        "loss_heatmap": (positive_loss.sum() + negative_loss.sum()) / count,
        "loss_size": F.l1_loss(at_centres(outputs.log_sizes)[mask], targets["log_size"][mask], reduction="sum") / count,
        "loss_offset": F.l1_loss(at_centres(outputs.offsets)[mask], targets["offset"][mask], reduction="sum") / count,
    }


def per_organ_at(map_: Tensor, indices: Tensor) -> Tensor:
    """Each organ's 2 values of a per-organ map ``[N, K, 2, h, w]`` at its flat cell ``indices`` ``[N, K]``."""
    flat = map_.flatten(3)
    return torch.gather(flat, 3, indices[:, :, None, None].expand(-1, -1, 2, 1))[..., 0]


def decode(outputs: ViewOutputs) -> ViewDetections:
    """Each organ's highest heatmap peak in each view, with its box in pixels (differentiable in size and offset)."""
    width = outputs.heatmap_logits.shape[-1]
    scores, indices = outputs.heatmap_logits.sigmoid().flatten(2).max(dim=-1)  # [N, K]
    cell = torch.stack([indices % width, indices // width], dim=-1).to(outputs.offsets.dtype)

    def gather(map_: Tensor) -> Tensor:  # [N, C, h, w] -> [N, K, C]
        flat = map_.flatten(2)
        return torch.gather(flat, 2, indices[:, None, :].expand(-1, flat.shape[1], -1)).transpose(1, 2)

    centre = (cell + per_organ_at(outputs.offsets, indices)) * outputs.stride
    half = per_organ_at(outputs.log_sizes, indices).exp() / 2
    return ViewDetections(torch.cat([centre - half, centre + half], dim=-1), scores, gather(outputs.features), indices)
