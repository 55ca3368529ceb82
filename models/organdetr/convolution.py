"""3D convolutions through oneDNN on the CPU, whatever their size.

For a batch of one, PyTorch runs a 3D convolution with its native im2col kernel instead of oneDNN's when channels x
depth x height is at most 20480 (``ConvParams::use_mkldnn``, a rule made for 2D images). That takes in this network's
first convolution (1 channel at 128^3) and its deep stages (64 channels at 16^3, 128 at 8^3), and the segmentation
branch's convolutions of small regions, where oneDNN is 3-8x faster, forward and backward
(``benchmarks/convolution_paths.py``). :func:`conv3d` and :class:`Conv3d` (same parameters and state-dict keys as
``nn.Conv3d``) ask for oneDNN directly on the CPU, results within float rounding, and leave every other case to
PyTorch. A 1x1x1 convolution of a channels-last input (the segmentation branch's classifiers) is a matrix product
over the channel axis there instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def onednn_applies(input: Tensor, padding_mode: str, padding: object) -> bool:
    """Whether oneDNN can run this convolution: float32 on a CPU build with oneDNN enabled, zero padding by numbers."""
    return (
        input.device.type == "cpu"
        and input.dtype == torch.float32
        and padding_mode == "zeros"
        and not isinstance(padding, str)
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


def pointwise_applies(
    input: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int], groups: int
) -> bool:
    """Whether a convolution is a 1x1x1 one (no stride, padding or groups) of a channels-last input."""
    return (
        tuple(weight.shape[2:]) == (1, 1, 1)
        and set(stride) == {1}
        and set(padding) == {0}
        and groups == 1
        and input.is_contiguous(memory_format=torch.channels_last_3d)
    )


def conv3d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: Sequence[int] = (1, 1, 1),
    padding: Sequence[int] = (0, 0, 0),
    dilation: Sequence[int] = (1, 1, 1),
    groups: int = 1,
) -> Tensor:
    """``F.conv3d`` (zero padding by numbers) on oneDNN on the CPU. There a 1x1x1 convolution of a channels-last
    input is a matrix product over the channel axis instead: the same numbers (to float rounding), the layout kept,
    forward and backward ~2x faster than oneDNN's for the segmentation branch's few channels (its classifier at
    stride 2, batch 2, one thread: 67 against 155 ms)."""
    if not onednn_applies(input, "zeros", padding):
        return F.conv3d(input, weight, bias, stride, padding, dilation, groups)
    if pointwise_applies(input, weight, stride, padding, groups):
        return F.linear(input.movedim(1, -1), weight.flatten(1), bias).movedim(-1, 1)
    return torch.ops.aten.mkldnn_convolution(input, weight, bias, list(padding), list(stride), list(dilation), groups)


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that runs as :func:`conv3d` on the CPU (same parameters and state-dict keys)."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super()._conv_forward(input, weight, bias)
        return conv3d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)
