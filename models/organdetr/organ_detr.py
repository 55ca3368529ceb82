"""The Organ-DETR network: CNN feature pyramid -> MSA encoder -> deformable DETR decoder -> heads.

``OrganDETR.forward(images)`` returns a DETR-style dict:

* ``pred_logits`` ``[B, N, K+1]``: class logits, index ``K`` = no object;
* ``pred_boxes`` ``[B, N, 6]``: sigmoid-normalised ``(c0, c1, c2, s0, s1, s2)`` in array-axis order;
* ``aux_outputs``: the same two keys for every decoder layer but the last;
* ``pred_quality`` (with ``ModelConfig.quality_head``) ``[B, N]``: logit of each box's predicted IoU, also per
  auxiliary layer;
* ``pred_presence`` (with ``ModelConfig.presence_head``) ``[B, K]``: logit of each organ being in the input, from
  the ``presence_levels`` coarsest encoder levels pooled over space (mean and max);
* ``seg_logits`` (training, or ``return_segmentation=True``, when the config has segmentation heads): one
  ``[B, K+1, d0, d1, d2]`` map per MSA output level, finest first (channel = label value, 0 = background);
* ``seg_full_logits`` (same condition, with ``ModelConfig.segmentation_branch.enabled``, unless ``branch=False``):
  ``[B, K+1, D0/2, D1/2, D2/2]`` at stride 2 from :class:`SegmentationBranch`; with its ``output_stride`` 1 also
  ``seg_fine_logits``: per sample a :class:`~organdetr.segmentation_branch.FineLogits` (input-grid logits in the
  region where the stride-2 logits see an organ) or ``None``.

With ``ModelConfig.msa.enabled = False`` the FPN levels go straight (1x1x1-projected to ``d_model`` when needed)
to the decoder and the segmentation heads: the no-MSA baseline.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .backbone import backbone_divisor, backbone_stride, build_backbone
from .config import ModelConfig
from .convolution import Conv3d
from .decoder import DeformableDecoder, DeformableEncoder
from .msa import MultiScaleAttentionEncoder
from .segmentation_branch import SegmentationBranch


def _lcm(values: list[int]) -> int:
    result = 1
    for value in values:
        result = result * value // math.gcd(result, value)
    return result


class OrganDETR(nn.Module):
    """Organ-DETR detector; see the module docstring for the output dict."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d_model = config.decoder.d_model
        fpn_channels = config.backbone.fpn_channels
        num_levels = len(config.backbone.out_stages)
        self.backbone = build_backbone(config.backbone)
        if config.msa.enabled:
            self.msa: nn.Module | None = MultiScaleAttentionEncoder(fpn_channels, d_model, num_levels, config.msa)
            self.input_proj = None
        else:
            self.msa = None
            self.input_proj = nn.ModuleList(
                nn.Identity() if fpn_channels == d_model else Conv3d(fpn_channels, d_model, 1)
                for _ in range(num_levels)
            )
        self.encoder = DeformableEncoder(config.decoder, num_levels) if config.decoder.num_encoder_layers > 0 else None
        self.decoder = DeformableDecoder(config.decoder, num_levels, config.num_classes, config.quality_head)
        self.seg_heads = (
            nn.ModuleList(Conv3d(d_model, config.num_classes + 1, 1) for _ in range(num_levels))
            if config.segmentation_heads
            else None
        )
        self.presence_head = (
            nn.Sequential(
                nn.Linear(2 * d_model * config.presence_levels, d_model),
                nn.ReLU(),
                nn.Linear(d_model, config.num_classes),
            )
            if config.presence_head
            else None
        )
        self.seg_branch = (
            SegmentationBranch(
                fpn_channels,
                self.backbone.stride2_channels,
                config.backbone.in_channels,
                config.num_classes,
                config.segmentation_branch,
            )
            if config.segmentation_branch.enabled
            else None
        )

    @property
    def size_divisor(self) -> int:
        """Every spatial input dimension must be a multiple of this (encoder halvings and MSA patching)."""
        factors = [backbone_divisor(self.config.backbone)]
        if self.config.msa.enabled:
            patch = self.config.msa.patch_size
            factors += [backbone_stride(stage) * patch for stage in self.config.backbone.out_stages]
        return _lcm(factors)

    def check_input_size(self, spatial_size: tuple[int, ...]) -> None:
        """Raise ``ValueError`` unless ``spatial_size`` (3 values) suits the pyramid and the MSA patching."""
        divisor = self.size_divisor
        if len(spatial_size) != 3 or any(size % divisor or size == 0 for size in spatial_size):
            raise ValueError(
                f"input spatial size {tuple(spatial_size)} must be 3 positive multiples of {divisor} "
                "(backbone downsampling x MSA patch size)"
            )

    def forward(self, images: Tensor, return_segmentation: bool | None = None, branch: bool = True) -> dict:
        """``images`` ``[B, 1, D0, D1, D2]`` -> prediction dict (see module docstring); ``branch=False`` leaves the
        segmentation branch's outputs out of it (a training run that cannot train the branch, :meth:`branch_trains`)."""
        if images.dim() != 5:
            raise ValueError(f"expected images [B, C, D0, D1, D2], got shape {tuple(images.shape)}")
        self.check_input_size(tuple(images.shape[2:]))
        features, stride2 = self.backbone(images)
        if self.msa is not None:
            levels = self.msa(features)
        else:
            levels = [proj(feature) for proj, feature in zip(self.input_proj, features, strict=True)]
        spatial_shapes = [tuple(level.shape[2:]) for level in levels]
        memory = self._flatten(levels)
        if self.encoder is not None:
            memory = self.encoder(memory, spatial_shapes)
        predictions = self.decoder(memory, spatial_shapes)
        outputs: dict = dict(predictions[-1])
        outputs["aux_outputs"] = predictions[:-1]
        if self.presence_head is not None:
            pooled = [level.flatten(2) for level in levels[len(levels) - self.config.presence_levels :]]
            outputs["pred_presence"] = self.presence_head(
                torch.cat([pool for level in pooled for pool in (level.mean(-1), level.amax(-1))], dim=1)
            )
        want_segmentation = self.training if return_segmentation is None else return_segmentation
        if want_segmentation and self.seg_heads is not None:
            outputs["seg_logits"] = [head(level) for head, level in zip(self.seg_heads, levels, strict=True)]
        if want_segmentation and branch and self.seg_branch is not None:
            outputs.update(self.seg_branch(features[0], stride2, images))
        return outputs

    def branch_trains(self) -> bool:
        """Whether the segmentation branch's loss reaches a trainable parameter. Its outputs come from the backbone
        and the branch alone, so a run that trains neither (``--train-only decoder``, or ``msa decoder``) need not
        compute them: about half its CPU step time."""
        sources = (self.backbone, self.seg_branch)
        return any(p.requires_grad for module in sources if module is not None for p in module.parameters())

    @staticmethod
    def _flatten(levels: list[Tensor]) -> Tensor:
        """Concatenate ``[B, C, d0, d1, d2]`` maps into a ``[B, S, C]`` token memory (row-major per level)."""
        return torch.cat([level.flatten(2).transpose(1, 2) for level in levels], dim=1)


def build_model(config: ModelConfig) -> OrganDETR:
    """Build an :class:`OrganDETR` from its configuration."""
    return OrganDETR(config)
