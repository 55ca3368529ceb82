"""Full-resolution segmentation branch (Retina U-Net style, as in nnDetection and Transoar).

The multiscale heads of the paper segment at strides 4-16: too coarse to make a box precise. This branch decodes
the finest pyramid level (stride 4): upsample x2, join the stride-2 encoder features, conv, and a 1x1x1 classifier
gives ``K + 1`` logits per stride-2 voxel (channel = label value, 0 = background): ``seg_full_logits``.

Even a perfect segmentation seen at stride 2 bounds its boxes at a mean IoU of 0.68-0.86 per organ (OpenKBP
training cases), too coarse for boxes at IoU 0.75. With ``output_stride`` 1 a **fine stage** adds the input grid:
the stride-2 features upsampled x2 and joined with the image, two convs and a 1x1x1 classifier whose output is
added to the upsampled stride-2 logits (a residual: zero-initialised, the stage starts as the upsampled logits and
learns the corrections): ``seg_fine_logits``. The stage costs ~4x a training step over a whole 128^3 window on a
CPU, so it runs only in the **region** where the stride-2 logits see an organ (any organ's probability at or above
``fine_region_threshold``, plus ``fine_region_margin`` stride-2 voxels); elsewhere the fine logits are the
upsampled stride-2 ones. Without normalisation layers in the stage, the region gives the same logits as the whole
grid would. The branch's organs refine the query boxes (:mod:`organdetr.box_refinement`) and are the segmentation
preview.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import LEAKY_SLOPE, conv_norm_act
from .config import SegmentationBranchConfig

# Stride-2 voxels of context around the region that the fine stage reads, so that the region's logits are exact:
# three input-grid voxels (one for the trilinear upsampling's edge, two for the stage's 3x3x3 convolutions).
FINE_HALO = 2


def _unit(in_channels: int, out_channels: int) -> nn.Sequential:
    return conv_norm_act(in_channels, out_channels, stride=1, norm="instance")


def _fine_unit(in_channels: int, out_channels: int) -> nn.Sequential:
    """Conv and LeakyReLU without normalisation: statistics over a region would depend on the region."""
    return nn.Sequential(nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1), nn.LeakyReLU(LEAKY_SLOPE))


def fine_regions(coarse_logits: Tensor, threshold: float, margin: int) -> list[tuple[slice, ...] | None]:
    """Per sample, the stride-2 box where any organ's probability reaches ``threshold``, grown by ``margin`` voxels
    (``None``: no organ anywhere)."""
    organ_probability = 1.0 - coarse_logits.detach().float().softmax(dim=1)[:, 0]
    regions: list[tuple[slice, ...] | None] = []
    for seen in organ_probability >= threshold:
        if not seen.any():
            regions.append(None)
            continue
        region = []
        for axis, size in enumerate(seen.shape):
            others = tuple(a for a in range(seen.dim()) if a != axis)
            hits = seen.any(dim=others).nonzero()[:, 0]
            region.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, size)))
        regions.append(tuple(region))
    return regions


class SegmentationBranch(nn.Module):
    """``(finest pyramid level [B, F, D/4], stride-2 features [B, S, D/2], image [B, C, D])`` -> ``{"seg_full_logits":
    [B, K+1, D/2]}``, plus ``"seg_fine_logits": [B, K+1, D]`` with ``output_stride`` 1."""

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
        self.config = config
        half, full = config.channels
        self.to_half = _unit(pyramid_channels + stride2_channels, half)
        self.classifier = nn.Conv3d(half, num_classes + 1, kernel_size=1)
        self.fine_units: nn.Module | None = None
        self.fine_classifier: nn.Conv3d | None = None
        if config.output_stride == 1:
            self.fine_units = nn.Sequential(_fine_unit(half + image_channels, full), _fine_unit(full, full))
            self.fine_classifier = nn.Conv3d(full, num_classes + 1, kernel_size=1)
            nn.init.zeros_(self.fine_classifier.weight)
            nn.init.zeros_(self.fine_classifier.bias)

    def forward(self, finest: Tensor, stride2: Tensor, images: Tensor) -> dict[str, Tensor]:
        x = F.interpolate(finest, size=stride2.shape[2:], mode="trilinear", align_corners=False)
        half = self.to_half(torch.cat([x, stride2], dim=1))
        coarse = self.classifier(half)
        outputs = {"seg_full_logits": coarse}
        if self.fine_units is not None:
            outputs["seg_fine_logits"] = self._fine(half, coarse, images)
        return outputs

    def _fine(self, half: Tensor, coarse: Tensor, images: Tensor) -> Tensor:
        """Input-grid logits: the upsampled coarse ones, corrected by the fine stage inside each sample's region."""
        upsampled = F.interpolate(coarse, size=images.shape[2:], mode="trilinear", align_corners=False)
        regions = fine_regions(coarse, self.config.fine_region_threshold, self.config.fine_region_margin)
        corrected = []
        for b, region in enumerate(regions):
            sample = upsampled[b]
            if region is not None:
                read = tuple(
                    slice(max(r.start - FINE_HALO, 0), min(r.stop + FINE_HALO, n))
                    for r, n in zip(region, half.shape[2:], strict=True)
                )
                features = F.interpolate(
                    half[(b, slice(None), *read)][None], scale_factor=2, mode="trilinear", align_corners=False
                )
                image = images[(b, slice(None), *(slice(2 * r.start, 2 * r.stop) for r in read))][None]
                stage = self.fine_classifier(self.fine_units(torch.cat([features, image], dim=1)))[0]
                inner = tuple(
                    slice(2 * (r.start - w.start), 2 * (r.stop - w.start)) for r, w in zip(region, read, strict=True)
                )
                target = (slice(None), *(slice(2 * r.start, 2 * r.stop) for r in region))
                sample = sample.clone()
                sample[target] = sample[target] + stage[(slice(None), *inner)]
            corrected.append(sample)
        return torch.stack(corrected)
