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

from collections.abc import Callable

import alternating_arms as bench
import organdetr.segmentation_branch as branch_module
import torch

LAYOUTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "channels-last": branch_module.channels_last_on_cpu,
    "default": lambda tensor: tensor,
}


def _branch_loss(outputs: dict) -> torch.Tensor:
    """A loss touching every logit of the branch (its value is irrelevant: the backward pass is timed)."""
    fine = [item.logits.mean() for item in outputs.get("seg_fine_logits", []) if item is not None]
    return outputs["seg_full_logits"].mean() + sum(fine, torch.zeros(()))


def main() -> None:
    args = bench.benchmark_arguments(__doc__.splitlines()[0])
    model, images = bench.shipped_network_window(args.input)
    arms = bench.swapped_arms(branch_module, "channels_last_on_cpu", LAYOUTS)
    tasks = {
        "forward (inference)": lambda: bench.forward_pass(model, images),
        "training step": lambda: bench.training_step(model, images, _branch_loss),
    }
    window = tuple(images.shape[2:])
    print(f"input {args.input.name}: window {window}, {args.threads} threads, torch {torch.__version__}")
    for task_name, task in tasks.items():
        medians, outputs = bench.alternate(arms, task, args.repeats)
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
