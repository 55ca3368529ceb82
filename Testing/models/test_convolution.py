"""organdetr.convolution.Conv3d: oneDNN for the small batch-1 3D convolutions PyTorch sends to its native kernel."""

from __future__ import annotations

import pytest
import torch
from organdetr.convolution import Conv3d
from torch import nn
from torch.profiler import ProfilerActivity, profile


def _kernels(module: nn.Module, data: torch.Tensor) -> set[str]:
    """The convolution kernels a forward and backward pass of ``module`` on ``data`` ran."""
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        module(data).sum().backward()
    return {event.key for event in trace.key_averages() if "conv" in event.key and "backward" not in event.key}


@pytest.mark.parametrize(("channels", "size", "stride"), [(1, 32, 2), (64, 16, 1), (32, 8, 1)])
def test_onednn_runs_the_convolutions_pytorch_would_not_give_it_with_the_same_results(channels, size, stride):
    torch.manual_seed(0)
    reference = nn.Conv3d(channels, 16, kernel_size=3, stride=stride, padding=1)
    fast = Conv3d(channels, 16, kernel_size=3, stride=stride, padding=1)
    fast.load_state_dict(reference.state_dict())  # the same parameters under the same keys
    data = torch.randn(1, channels, size, size, size)
    inputs = [data.clone().requires_grad_() for _ in range(2)]
    assert "aten::mkldnn_convolution" not in _kernels(reference, inputs[0])  # PyTorch's own rule: native kernel
    assert "aten::mkldnn_convolution" in _kernels(fast, inputs[1])
    torch.testing.assert_close(fast(data), reference(data), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(inputs[1].grad, inputs[0].grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-3)


@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # torch.backends.mkldnn.flags, about Intel GPUs
def test_pytorch_decides_where_onednn_is_off_or_cannot_run():
    fast = Conv3d(4, 4, kernel_size=3, padding=1)
    data = torch.randn(1, 4, 8, 8, 8, requires_grad=True)
    with torch.backends.mkldnn.flags(enabled=False):
        assert "aten::mkldnn_convolution" not in _kernels(fast, data)
    circular = Conv3d(4, 4, kernel_size=3, padding=1, padding_mode="circular")
    assert "aten::mkldnn_convolution" not in _kernels(circular, data)
    assert "aten::mkldnn_convolution" not in _kernels(fast.double(), data.double().detach().requires_grad_())
