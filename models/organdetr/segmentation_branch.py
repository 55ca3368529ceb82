"""Full-resolution segmentation branch (Retina U-Net style, as in nnDetection and Transoar).

The multiscale heads of the paper segment at strides 4-16: too coarse to make a box precise. This branch decodes
the finest pyramid level (stride 4): upsample x2, join the stride-2 encoder features, conv; with ``output_stride``
1 also upsample x2, join the image itself, conv; a 1x1x1 classifier gives ``K + 1`` logits per voxel (channel =
label value, 0 = background), at stride 2 or on the input grid. Its organs refine the query boxes
(:mod:`organdetr.box_refinement`) and are the segmentation preview.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import conv_norm_act
from .config import SegmentationBranchConfig


def _unit(in_channels: int, out_channels: int) -> nn.Sequential:
    return conv_norm_act(in_channels, out_channels, stride=1, norm="instance")


class SegmentationBranch(nn.Module):
    """``(finest pyramid level [B, F, D/4], stride-2 features [B, S, D/2], image [B, C, D]) -> [B, K+1, D]``."""

    def __init__(
        self,
        pyramid_channels: int,
        stride2_channels: int,
        image_channels: int,
        num_classes: int,
        config: SegmentationBranchConfig,
    ) -> None:
        super().__init__()
        if config.output_stride not in (1, 2):
            raise ValueError(f"segmentation branch output_stride must be 1 or 2, got {config.output_stride}")
        half, full = config.channels
        self.to_half = _unit(pyramid_channels + stride2_channels, half)
        self.to_full = _unit(half + image_channels, full) if config.output_stride == 1 else None
        self.classifier = nn.Conv3d(full if self.to_full is not None else half, num_classes + 1, kernel_size=1)

    def forward(self, finest: Tensor, stride2: Tensor, images: Tensor) -> Tensor:
        x = F.interpolate(finest, size=stride2.shape[2:], mode="trilinear", align_corners=False)
        x = self.to_half(torch.cat([x, stride2], dim=1))
        if self.to_full is not None:
            x = F.interpolate(x, size=images.shape[2:], mode="trilinear", align_corners=False)
            x = self.to_full(torch.cat([x, images], dim=1))
        return self.classifier(x)
