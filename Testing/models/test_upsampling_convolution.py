"""The coarse-grid computation of a convolution after a x2 trilinear upsampling is the two steps', borders included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from organdetr.upsampling_convolution import FOLDED_FINE_CHANNELS, upsampled_convolution


def _two_steps(coarse, fine, weight, bias):
    upsampled = F.interpolate(coarse, scale_factor=2, mode="trilinear", align_corners=False)
    joined = upsampled if fine is None else torch.cat([upsampled, fine], dim=1)
    return F.conv3d(joined, weight, bias, padding=1)


@pytest.mark.parametrize(
    ("grid", "fine_channels"),
    [
        ((5, 3, 4), 1),  # the image folded into the coarse convolution
        ((4, 2, 3), FOLDED_FINE_CHANNELS + 2),  # wider: convolved on the fine grid
        ((1, 2, 3), 2),  # an axis of one coarse voxel: both fine layers are border layers
        ((6, 5, 4), 0),
    ],
)
def test_equals_upsampling_then_convolution(grid, fine_channels) -> None:
    torch.manual_seed(0)
    coarse = torch.randn(2, 3, *grid, dtype=torch.float64, requires_grad=True)
    fine = None
    if fine_channels:
        fine = torch.randn(2, fine_channels, *(2 * n for n in grid), dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3 + fine_channels, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    expected = _two_steps(coarse, fine, weight, bias)
    result = upsampled_convolution(coarse, fine, weight, bias)
    assert result.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(result, expected, rtol=1e-12, atol=1e-12)  # every voxel, the faces too
    inputs = [tensor for tensor in (coarse, fine, weight, bias) if tensor is not None]
    upstream = torch.randn_like(expected)
    for got, wanted in zip(
        torch.autograd.grad((result * upstream).sum(), inputs),
        torch.autograd.grad((expected * upstream).sum(), inputs),
        strict=True,
    ):
        torch.testing.assert_close(got, wanted, rtol=1e-10, atol=1e-10)


def test_float32_channels_last_inputs() -> None:
    """The branch's own case: float32, channels-last, no bias."""
    torch.manual_seed(1)
    coarse = torch.randn(1, 8, 6, 5, 7).contiguous(memory_format=torch.channels_last_3d)
    fine = torch.rand(1, 1, 12, 10, 14)
    weight = torch.randn(5, 9, 3, 3, 3)
    torch.testing.assert_close(
        upsampled_convolution(coarse, fine, weight, None), _two_steps(coarse, fine, weight, None), rtol=1e-5, atol=1e-5
    )


def test_fine_grid_must_be_twice_the_coarse_grid() -> None:
    with pytest.raises(ValueError, match="not twice the coarse grid"):
        upsampled_convolution(torch.randn(1, 2, 4, 4, 4), torch.randn(1, 1, 8, 8, 7), torch.randn(3, 3, 3, 3, 3), None)
