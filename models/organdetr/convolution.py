"""3D convolutions through oneDNN on the CPU, whatever their size.

For a batch of one, PyTorch runs a 3D convolution with its native im2col kernel instead of oneDNN's when channels x
depth x height is at most 20480 (``ConvParams::use_mkldnn``, a rule made for 2D images). That takes in this network's
first convolution (1 channel at 128^3) and its deep stages (64 channels at 16^3, 128 at 8^3), where oneDNN is 3-8x
faster, forward and backward (``benchmarks/convolution_paths.py``). :class:`Conv3d` asks for oneDNN directly on the
CPU (same parameters and state-dict keys as ``nn.Conv3d``; results within float rounding) and leaves every other case
to PyTorch.
"""

from __future__ import annotations

import torch
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


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that runs on oneDNN on the CPU also where PyTorch's size rule would not pick it."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if onednn_applies(input, self.padding_mode, self.padding):
            return torch.ops.aten.mkldnn_convolution(
                input, weight, bias, list(self.padding), list(self.stride), list(self.dilation), self.groups
            )
        return super()._conv_forward(input, weight, bias)
