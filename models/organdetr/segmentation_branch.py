"""Full-resolution segmentation branch (Retina U-Net style, as in nnDetection and Transoar).

The multiscale heads of the paper segment at strides 4-16: too coarse to make a box precise. This branch decodes
the finest pyramid level (stride 4): upsample x2, join the stride-2 encoder features, conv, and a 1x1x1 classifier
gives ``K + 1`` logits per stride-2 voxel (channel = label value, 0 = background): ``seg_full_logits``.

Even a perfect segmentation seen at stride 2 bounds its boxes at a mean IoU of 0.68-0.86 per organ (OpenKBP
training cases), too coarse for boxes at IoU 0.75. With ``output_stride`` 1 a **fine stage** adds the input grid:
the stride-2 features upsampled x2 and joined with the image, two convs and a 1x1x1 classifier whose output is
added to the upsampled stride-2 logits (a residual: zero-initialised, the stage starts as the upsampled logits and
learns the corrections): ``seg_fine_logits``. Over a whole 128^3 window the stage costs ~5x a branch-only training
step on a CPU, so it runs only in the **region** where the stride-2 logits see an organ (any organ's probability at or
above ``fine_region_threshold``, plus ``fine_region_margin`` stride-2 voxels): the fine logits are that region's, and
outside it (every organ below the threshold) the input grid is background, in training and in inference. Without
normalisation layers in the stage, the region's logits are those the whole grid would give. Both x2 upsamplings
and the convolutions after them are computed together on the coarse grid (:mod:`organdetr.upsampling_convolution`,
exact). The branch's organs refine the query boxes (:mod:`organdetr.box_refinement`) and are the segmentation preview.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import LEAKY_SLOPE, conv_norm_act
from .config import SegmentationBranchConfig
from .convolution import Conv3d
from .upsampling_convolution import upsampled_convolution

# Stride-2 voxels of context around a region read by the fine stage, so that the region's logits are exact: three
# input-grid voxels (one for the trilinear upsampling's edge, two for the stage's 3x3x3 convolutions).
FINE_HALO = 2
Region = tuple[slice, ...]


def channels_last_on_cpu(x: Tensor) -> Tensor:
    """``x`` in channels-last layout on the CPU, where oneDNN runs this branch's 3D convolutions with few channels 2-4x
    faster than in the default layout, forward and backward (``benchmarks/segmentation_layout.py``); unchanged on
    other devices, where it is unmeasured. Convolutions keep their input's layout, so the branch stays in it."""
    return x.contiguous(memory_format=torch.channels_last_3d) if x.device.type == "cpu" else x


@dataclass
class FineLogits:
    """One sample's input-grid logits ``[K+1, *region size]`` inside ``region`` (slices of the input grid); outside it
    no organ reaches the region threshold: background."""

    region: Region
    logits: Tensor


def _unit(in_channels: int, out_channels: int) -> nn.Sequential:
    return conv_norm_act(in_channels, out_channels, stride=1, norm="instance")


def _fine_unit(in_channels: int, out_channels: int) -> nn.Sequential:
    """Conv and LeakyReLU without normalisation: statistics over a region would depend on the region."""
    return nn.Sequential(Conv3d(in_channels, out_channels, kernel_size=3, padding=1), nn.LeakyReLU(LEAKY_SLOPE))


def fine_regions(probabilities: Tensor, threshold: float, margin: int) -> list[Region | None]:
    """Per sample of the stride-2 class probabilities ``[B, K+1, ...]`` (channel 0: background), the box where any
    organ's probability reaches ``threshold``, grown by ``margin`` voxels (``None``: no organ anywhere)."""
    seen = 1.0 - probabilities[:, 0] >= threshold
    sizes = seen.shape[1:]
    # Per sample and axis, the slices that see an organ, for the whole batch in one transfer (a GPU waits once).
    spans = [seen.any(dim=tuple(a for a in range(1, seen.dim()) if a != axis)) for axis in range(1, seen.dim())]
    hits = torch.cat(spans, dim=1).cpu().numpy()
    regions: list[Region | None] = []
    for sample in hits:
        found = [np.flatnonzero(axis) for axis in np.split(sample, np.cumsum(sizes)[:-1])]
        if not found[0].size:
            regions.append(None)
            continue
        regions.append(
            tuple(
                slice(max(int(f[0]) - margin, 0), min(int(f[-1]) + 1 + margin, n))
                for f, n in zip(found, sizes, strict=True)
            )
        )
    return regions


def on_input_grid(region: Region) -> Region:
    """Stride-2 slices -> the input-grid slices they cover."""
    return tuple(slice(2 * r.start, 2 * r.stop) for r in region)


def grown_region(region: Region, halo: int, shape: tuple[int, ...]) -> Region:
    """``region`` grown by ``halo`` voxels on every side, clipped to a grid of ``shape``."""
    return tuple(slice(max(r.start - halo, 0), min(r.stop + halo, n)) for r, n in zip(region, shape, strict=True))


def upsampled_region(coarse: Tensor, read: Region) -> Tensor:
    """``coarse [C, *stride-2 grid]`` inside ``read`` upsampled x2 (trilinear): equal to the whole grid's upsampled
    and cropped at least one input-grid voxel inside the edges of ``read`` that are not the grid's."""
    # A channels-last copy of the block: the CPU kernel upsamples it 2x faster than the strided view (~11 -> ~5 ms on
    # the chest CT), and the sum with the fine stage's channels-last output after it is faster too.
    block = channels_last_on_cpu(coarse[(slice(None), *read)][None])
    return F.interpolate(block, scale_factor=2, mode="trilinear", align_corners=False)[0]


def crop_to(values: Tensor, covered: Region, region: Region) -> Tensor:
    """The part of ``values [C, *covered]`` (input-grid slices) inside ``region`` (stride-2 slices within them)."""
    return values[
        (
            slice(None),
            *(slice(2 * r.start - c.start, 2 * r.stop - c.start) for r, c in zip(region, covered, strict=True)),
        )
    ]


class SegmentationBranch(nn.Module):
    """``(finest pyramid level [B, F, D/4], stride-2 features [B, S, D/2], image [B, C, D])`` -> ``{"seg_full_logits":
    [B, K+1, D/2]}``, plus with ``output_stride`` 1 ``"seg_fine_logits"``: per sample a :class:`FineLogits` (``None``
    where no organ reaches the region threshold)."""

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
        self.classifier = Conv3d(half, num_classes + 1, kernel_size=1)
        self.fine_units: nn.Module | None = None
        self.fine_classifier: Conv3d | None = None
        if config.output_stride == 1:
            self.fine_units = nn.Sequential(_fine_unit(half + image_channels, full), _fine_unit(full, full))
            self.fine_classifier = Conv3d(full, num_classes + 1, kernel_size=1)
            nn.init.zeros_(self.fine_classifier.weight)
            nn.init.zeros_(self.fine_classifier.bias)

    def forward(self, finest: Tensor, stride2: Tensor, images: Tensor) -> dict[str, Tensor | list[FineLogits | None]]:
        finest, stride2, conv = channels_last_on_cpu(finest), channels_last_on_cpu(stride2), self.to_half.conv
        joined = upsampled_convolution(finest, stride2, conv.weight, conv.bias)
        # Instance normalisation returns the default layout: back to channels-last for the convolutions after it.
        half = channels_last_on_cpu(self.to_half.adn(joined))
        coarse = self.classifier(half)
        outputs: dict[str, Tensor | list[FineLogits | None]] = {"seg_full_logits": coarse}
        if self.fine_units is not None and self.fine_classifier is not None:
            probabilities = coarse.detach().float().softmax(dim=1)
            regions = fine_regions(probabilities, self.config.fine_region_threshold, self.config.fine_region_margin)
            outputs["seg_fine_logits"] = [
                None if region is None else self._fine(half[b], coarse[b], images[b], region)
                for b, region in enumerate(regions)
            ]
        return outputs

    def _fine(self, half: Tensor, coarse: Tensor, image: Tensor, region: Region) -> FineLogits:
        """One sample's input-grid logits in ``region``: the upsampled coarse ones plus the fine stage's correction."""
        assert self.fine_units is not None and self.fine_classifier is not None
        read = grown_region(region, FINE_HALO, coarse.shape[1:])
        covered = on_input_grid(read)
        first_conv, first_activation = self.fine_units[0]
        features = upsampled_convolution(
            half[(slice(None), *read)][None], image[(slice(None), *covered)][None], first_conv.weight, first_conv.bias
        )
        stage = self.fine_classifier(self.fine_units[1:](first_activation(features)))
        upsampled = upsampled_region(coarse, read)
        logits = crop_to(upsampled + stage[0], covered, region)
        return FineLogits(region=on_input_grid(region), logits=logits)
