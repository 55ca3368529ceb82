"""Benchmark: Dense Query Matching time, alone and as a share of a real training step.

Usage: python benchmarks/dqm_matching_time.py [--preset small] [--size 64] [--batch-size 2] [--steps 3]
                                              [--lambdas 0 0.2] [--device auto]
Trains the network of a preset for a few steps on the project's real head-and-neck test CT (OpenKBP pt_201, its
organ boxes as targets) and prints, per dense_lambda: seconds per training step (forward, losses, backward,
optimiser), seconds spent in the matcher during those steps (final + auxiliary decoder layers) and their ratio,
and the median time of one matching of the final layer alone (organdetr.matcher.time_matching).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import SimpleITK as sitk
import torch
from organdetr.box_ops import boxes_from_label_map
from organdetr.config import preset_config
from organdetr.criterion import SetCriterion
from organdetr.inference import select_device
from organdetr.matcher import DenseQueryMatcher, time_matching
from organdetr.organ_detr import build_model
from organdetr.preprocess import preprocess_image, preprocess_label

CASE = Path(__file__).resolve().parent.parent / "Testing" / "Data" / "openkbp_pt_201"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_step(
    model: torch.nn.Module, criterion: SetCriterion, optimizer: torch.optim.Optimizer, images: torch.Tensor, targets
) -> dict:
    """One optimiser step; returns the network outputs."""
    outputs = model(images)
    loss = criterion(outputs, targets)["loss"]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--size", type=int, default=64, help="cubic network input size")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 0.2])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = select_device(args.device)
    config = preset_config(args.preset)
    preprocess = replace(config.preprocess, spatial_size=(args.size,) * 3)
    volume = preprocess_image(sitk.ReadImage(str(CASE / "ct.nii.gz")), preprocess)
    image = volume.image
    label_map = preprocess_label(sitk.ReadImage(str(CASE / "oar_label.nii.gz")), preprocess, volume.grid)
    labels, boxes = boxes_from_label_map(label_map, config.model.num_classes)
    target = {"labels": labels, "boxes": boxes, "label_map": label_map}
    targets = [{key: value.to(device) for key, value in target.items()} for _ in range(args.batch_size)]
    images = image[None].expand(args.batch_size, -1, -1, -1, -1).contiguous().to(device)
    print(
        f"device {device}, preset {args.preset}, input {args.size}^3, batch {args.batch_size}, "
        f"{config.model.decoder.num_queries} queries, {labels.numel()} organs per image"
    )

    for dense_lambda in args.lambdas:
        torch.manual_seed(0)
        model = build_model(config.model).to(device).train()
        matcher = DenseQueryMatcher(replace(config.matcher, dense_lambda=dense_lambda))
        criterion = SetCriterion(config.model.num_classes, matcher, config.loss).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr)

        outputs = training_step(model, criterion, optimizer, images, targets)  # warm-up
        synchronize(device)
        matcher.reset_timing()
        started = time.perf_counter()
        for _ in range(args.steps):
            outputs = training_step(model, criterion, optimizer, images, targets)
        synchronize(device)
        step_seconds = (time.perf_counter() - started) / args.steps
        match_seconds = matcher.elapsed_seconds / args.steps
        layers = matcher.calls // args.steps
        detached = {key: outputs[key].detach() for key in ("pred_logits", "pred_boxes")}
        alone = time_matching(matcher, detached, targets)
        positives = matcher.positives_per_target(config.model.decoder.num_queries, labels.numel())
        print(
            f"lambda {dense_lambda:g} ({positives} positives per organ): step {step_seconds * 1e3:.1f} ms, "
            f"matching {match_seconds * 1e3:.2f} ms per step over {layers} layers "
            f"({100 * match_seconds / step_seconds:.2f} % of the step), one final-layer matching {alone * 1e3:.2f} ms"
        )


if __name__ == "__main__":
    main()
