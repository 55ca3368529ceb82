"""oneDNN for every 3D convolution on the CPU (:mod:`organdetr.convolution`) against PyTorch's own choice, in one run.

Figures, not assertions. For a batch of one, PyTorch runs 3D convolutions with channels x depth x height <= 20480 on
its native im2col kernel. This prints

1. each such convolution of the shipped network alone (the shapes on the chest CT's window): PyTorch's kernel and
   oneDNN's, forward and forward + backward;
2. the shipped network's forward pass (inference mode) and a training step (forward, a loss touching every output,
   backward) with :class:`organdetr.convolution.Conv3d` on oneDNN and with PyTorch's choice, alternating the two in
   every repeat (medians of ``--repeats`` after one warm-up call), with the largest difference of the outputs.

    python benchmarks/convolution_paths.py [--input CT] [--threads 2] [--repeats 5]

PyTorch's choice is restored by swapping :func:`organdetr.convolution.onednn_applies` for one that says no: the
baseline is the same code without the change.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable

import organdetr.convolution as convolution
import torch
import torch.nn.functional as F
from alternating_arms import (
    alternate,
    benchmark_arguments,
    forward_pass,
    shipped_network_window,
    swapped_arms,
    training_step,
)

PATHS: dict[str, Callable[..., bool]] = {"oneDNN": convolution.onednn_applies, "PyTorch's choice": lambda *_: False}
# (input shape, weight shape, stride) of the shipped network's convolutions that PyTorch sends to its native kernel.
NATIVE_SHAPES = (
    ((1, 1, 128, 128, 128), (8, 1, 3, 3, 3), 2),
    ((1, 32, 16, 16, 16), (32, 32, 3, 3, 3), 1),
    ((1, 64, 16, 16, 16), (64, 64, 3, 3, 3), 1),
    ((1, 128, 8, 8, 8), (128, 128, 3, 3, 3), 1),
)


def _median_s(task: Callable[[], object], repeats: int) -> float:
    task()  # warm-up: allocator and oneDNN's kernel cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        task()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _tensors(outputs: object) -> list[torch.Tensor]:
    """Every tensor in the network's (nested) outputs."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        return [t for value in outputs.values() for t in _tensors(value)]
    if isinstance(outputs, list | tuple):
        return [t for value in outputs for t in _tensors(value)]
    return _tensors(getattr(outputs, "logits", None)) if hasattr(outputs, "logits") else []


def _convolve(data: torch.Tensor, weight: torch.Tensor, stride: int, onednn: bool, backward: bool) -> None:
    if onednn:
        out = torch.ops.aten.mkldnn_convolution(data, weight, None, [1] * 3, [stride] * 3, [1] * 3, 1)
    else:
        out = F.conv3d(data, weight, None, stride=stride, padding=1)
    if backward:
        out.sum().backward()


def single_convolutions(repeats: int) -> None:
    print("single convolutions (ms, median):  PyTorch's kernel / oneDNN, forward | forward + backward")
    for input_shape, weight_shape, stride in NATIVE_SHAPES:
        weight = torch.randn(weight_shape, requires_grad=True)
        data = torch.randn(input_shape, requires_grad=True)
        figures = [
            1000 * _median_s(functools.partial(_convolve, data, weight, stride, onednn, backward), repeats)
            for backward in (False, True)
            for onednn in (False, True)
        ]
        print(
            f"  {input_shape} x {weight_shape[:2]}: {figures[0]:.1f} / {figures[1]:.1f} | "
            f"{figures[2]:.1f} / {figures[3]:.1f}"
        )


def _every_output_loss(outputs: dict) -> torch.Tensor:
    return sum((t.float().mean() for t in _tensors(outputs) if t.requires_grad), torch.zeros(()))


def main() -> None:
    args = benchmark_arguments(__doc__.splitlines()[0])
    print(f"input {args.input.name}, {args.threads} threads, torch {torch.__version__}")
    single_convolutions(args.repeats)
    model, images = shipped_network_window(args.input)
    arms = swapped_arms(convolution, "onednn_applies", PATHS)
    tasks = {
        "forward (inference)": lambda: forward_pass(model, images),
        "training step": lambda: training_step(model, images, _every_output_loss),
    }
    for task_name, task in tasks.items():
        medians, outputs = alternate(arms, task, args.repeats)
        first, second = ([t.detach() for t in _tensors(out)] for out in outputs.values())
        difference = max((a.float() - b.float()).abs().max().item() for a, b in zip(first, second, strict=True))
        baseline = medians["PyTorch's choice"]
        print(
            f"{task_name:20s} oneDNN {medians['oneDNN']:.3f} s, PyTorch's choice {baseline:.3f} s: "
            f"{baseline / medians['oneDNN']:.2f}x; largest output difference {difference:.1e}"
        )


if __name__ == "__main__":
    main()
