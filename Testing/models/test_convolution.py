"""organdetr.convolution: oneDNN for the small batch-1 3D convolutions PyTorch sends to its native kernel, and a matrix
product for 1x1x1 convolutions of channels-last inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from organdetr.convolution import Conv3d, conv3d
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


@pytest.mark.parametrize("batch", [1, 2])
def test_pointwise_convolution_of_a_channels_last_input_is_a_matrix_product_with_the_same_results(batch):
    torch.manual_seed(2)
    reference = nn.Conv3d(16, 8, kernel_size=1)
    fast = Conv3d(16, 8, kernel_size=1)
    fast.load_state_dict(reference.state_dict())
    data = torch.randn(batch, 16, 6, 5, 7).contiguous(memory_format=torch.channels_last_3d)
    inputs = [data.clone().requires_grad_() for _ in range(2)]
    expected, result = reference(inputs[0]), fast(inputs[1])
    assert result.is_contiguous(memory_format=torch.channels_last_3d)  # the layout is kept for the next layer
    upstream = torch.randn_like(expected)
    (expected * upstream).sum().backward()
    (result * upstream).sum().backward()
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(inputs[1].grad, inputs[0].grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast.bias.grad, reference.bias.grad, rtol=1e-4, atol=1e-4)
    kernels = _kernels(fast, data.clone().requires_grad_())
    assert not any("convolution" in kernel for kernel in kernels), kernels  # no convolution kernel at all
    assert "aten::mkldnn_convolution" in _kernels(fast, data.contiguous().requires_grad_())  # default layout: oneDNN


def test_functional_form_pads_by_numbers_and_runs_on_onednn():
    torch.manual_seed(3)
    data, weight, bias = torch.randn(1, 4, 9, 8, 7), torch.randn(6, 4, 3, 3, 3), torch.randn(6)
    torch.testing.assert_close(
        conv3d(data, weight, bias, padding=(1, 1, 1)), F.conv3d(data, weight, bias, padding=1), rtol=1e-4, atol=1e-4
    )
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        conv3d(data, weight, bias, padding=(1, 1, 1))
    assert "aten::mkldnn_convolution" in {event.key for event in trace.key_averages()}
