"""3D CNN backbones returning a feature pyramid (finest level first).

``kind="fpn"``: a Retina U-Net style encoder-decoder. Encoder stage ``s`` starts with a stride-2 3x3x3
conv-norm-act (so its stride is ``2 ** (s + 1)``) followed by more 3x3x3 conv-norm-acts; the decoder is a feature
pyramid: 1x1x1 lateral convs, nearest top-down upsampling and addition, and a 3x3x3 output conv on every requested
level. ``kind="resnet"``: MONAI's ``ResNetFeatures`` with MONAI's ``FeaturePyramidNetwork`` on top. Both return
the maps of :attr:`BackboneConfig.out_stages` with :attr:`BackboneConfig.fpn_channels` channels each.

The ``fpn`` kind does without MONAI: ``import monai`` loads every MONAI submodule (scipy, matplotlib...), seconds
that ``organdetr detect`` would otherwise spend before its first voxel.
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn

from .config import BackboneConfig
from .convolution import Conv3d

SPATIAL_DIMS = 3
# LeakyReLU slope of the conv-norm-act units (nnU-Net / Retina U-Net convention).
LEAKY_SLOPE = 0.01
GROUP_NORM_GROUPS = 8
# ResNetFeatures returns conv1 (stride 2) then layer1..layer4 (strides 4..32): 5 stages.
RESNET_STAGES = 5


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(GROUP_NORM_GROUPS, channels)
    return nn.BatchNorm3d(channels)


def conv_norm_act(in_channels: int, out_channels: int, stride: int, norm: str) -> nn.Sequential:
    """3x3x3 conv (padding 1), norm, LeakyReLU: the layers of MONAI's ``Convolution(3, in_channels, out_channels,
    strides=stride, kernel_size=3, norm=..., act=("leakyrelu", ...))`` under the same names (``conv``, ``adn.N``,
    ``adn.A``), so checkpoints saved with MONAI's block load unchanged."""
    adn = nn.Sequential(OrderedDict(N=_norm(norm, out_channels), A=nn.LeakyReLU(LEAKY_SLOPE)))
    conv = Conv3d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)
    return nn.Sequential(OrderedDict(conv=conv, adn=adn))


def backbone_stride(stage: int) -> int:
    """Downsampling factor of encoder stage ``stage`` relative to the input."""
    return 2 ** (stage + 1)


def backbone_divisor(config: BackboneConfig) -> int:
    """The input's spatial size must be a multiple of this for every encoder stage to halve exactly."""
    # The ResNet runs only up to its coarsest requested stage (deeper layers are dropped).
    deepest = max(config.out_stages) if config.kind == "resnet" else len(config.stage_channels) - 1
    return backbone_stride(deepest)


class FPNBackbone(nn.Module):
    """Retina U-Net style encoder with a feature-pyramid decoder."""

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        if len(config.convs_per_stage) != len(config.stage_channels):
            raise ValueError("convs_per_stage and stage_channels must have the same length")
        if not config.out_stages or max(config.out_stages) >= len(config.stage_channels):
            raise ValueError(f"out_stages {config.out_stages} must index stage_channels {config.stage_channels}")
        self.out_stages = tuple(config.out_stages)
        self.stride2_channels = config.stage_channels[0]
        # Laterals start at the finest requested level: finer stages only feed the encoder.
        self.first_lateral = min(self.out_stages)
        stages = []
        in_channels = config.in_channels
        for channels, num_convs in zip(config.stage_channels, config.convs_per_stage, strict=True):
            units = [
                conv_norm_act(in_channels if i == 0 else channels, channels, 2 if i == 0 else 1, config.norm)
                for i in range(num_convs)
            ]
            stages.append(nn.Sequential(*units))
            in_channels = channels
        self.stages = nn.ModuleList(stages)
        lateral_channels = config.stage_channels[self.first_lateral :]
        self.laterals = nn.ModuleList(Conv3d(c, config.fpn_channels, kernel_size=1) for c in lateral_channels)
        self.outputs = nn.ModuleDict(
            {
                str(s): Conv3d(config.fpn_channels, config.fpn_channels, kernel_size=3, padding=1)
                for s in self.out_stages
            }
        )

    def forward(self, images: Tensor) -> tuple[list[Tensor], Tensor]:
        """Pyramid levels (finest first) and the stride-2 encoder features (skip of a segmentation decoder)."""
        features = []
        x = images
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        pyramid: dict[int, Tensor] = {}
        top_down: Tensor | None = None
        for offset in range(len(self.laterals) - 1, -1, -1):
            stage_index = self.first_lateral + offset
            lateral = self.laterals[offset](features[stage_index])
            if top_down is not None:
                lateral = lateral + F.interpolate(top_down, size=lateral.shape[2:], mode="nearest")
            top_down = lateral
            if stage_index in self.out_stages:
                pyramid[stage_index] = self.outputs[str(stage_index)](lateral)
        return [pyramid[s] for s in sorted(self.out_stages)], features[0]


class ResNetFPNBackbone(nn.Module):
    """MONAI ``ResNetFeatures`` (random init, no pickle download) with MONAI's ``FeaturePyramidNetwork``."""

    def __init__(self, config: BackboneConfig) -> None:
        # MONAI only for this kind (see the module docstring).
        from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork
        from monai.networks.nets.resnet import ResNetFeatures, get_inplanes

        super().__init__()
        if not config.out_stages or max(config.out_stages) >= RESNET_STAGES:
            raise ValueError(f"resnet out_stages {config.out_stages} must be in 0..{RESNET_STAGES - 1}")
        self.out_stages = tuple(sorted(config.out_stages))
        self.encoder = ResNetFeatures(
            f"resnet{config.resnet_depth}", pretrained=False, spatial_dims=SPATIAL_DIMS, in_channels=config.in_channels
        )
        expansion = self.encoder.layer1[0].expansion
        stage_channels = [get_inplanes()[0]] + [c * expansion for c in get_inplanes()]
        self.stride2_channels = stage_channels[0]
        self.first, self.last = min(self.out_stages), max(self.out_stages)
        # Layers deeper than the coarsest requested stage would get no gradient: skip them.
        for stage in range(self.last + 1, RESNET_STAGES):
            setattr(self.encoder, f"layer{stage}", nn.Identity())
        self.fpn = FeaturePyramidNetwork(SPATIAL_DIMS, stage_channels[self.first : self.last + 1], config.fpn_channels)
        # The FPN builds an output conv for every input level; drop the ones of levels nobody asked for.
        for offset, stage in enumerate(range(self.first, self.last + 1)):
            if stage not in self.out_stages:
                self.fpn.layer_blocks[offset] = nn.Identity()

    def forward(self, images: Tensor) -> tuple[list[Tensor], Tensor]:
        """Pyramid levels (finest first) and the stride-2 encoder features (conv1)."""
        features = self.encoder(images)
        named = {str(stage): features[stage] for stage in range(self.first, self.last + 1)}
        pyramid = self.fpn(named)
        return [pyramid[str(stage)] for stage in self.out_stages], features[0]


def build_backbone(config: BackboneConfig) -> nn.Module:
    """The configured backbone; its forward maps ``[B, C, D0, D1, D2]`` to a list of ``[B, F, d0, d1, d2]`` (and the
    stride-2 encoder features)."""
    if config.kind == "fpn":
        return FPNBackbone(config)
    if config.kind == "resnet":
        return ResNetFPNBackbone(config)
    raise ValueError(f"unknown backbone kind {config.kind!r}")
