"""Benchmark of the training pipeline on real OpenKBP cases: making a sample against a training step.

Usage: python benchmarks/training_pipeline.py [--data dataset.json|pack.npz] [--cases 8] [--rounds 2]
[--batch-size 2] [--device auto|cpu|cuda] [--threads N]

Prints seconds per training sample (a random field of view cut into a network window, then augmented) as one
loader worker makes it on the CPU (no augmentation / the default augmentation / the affine part on every sample),
the same made on the device by ``--data-on-device`` when the device is not the CPU, and the seconds per optimiser
step of the shipped model on the device, so that the samples a step needs can be set against what the loader makes.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace

import torch
from organdetr.checkpoint import load_checkpoint
from organdetr.config import AugmentConfig, FieldOfViewConfig
from organdetr.criterion import SetCriterion
from organdetr.dataset import DetectionDataset, collate
from organdetr.inference import select_device
from organdetr.matcher import DenseQueryMatcher
from organdetr.training_pack import load_training_data


def seconds_per_sample(dataset: DetectionDataset, rounds: int, synchronize: Callable[[], None]) -> float:
    started = time.perf_counter()
    for epoch in range(rounds):
        for index in range(len(dataset)):
            dataset[(epoch, index)]
    synchronize()
    return (time.perf_counter() - started) / (rounds * len(dataset))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="../shared/data/openkbp/dataset.json")
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else lambda: None

    loaded = load_checkpoint(None, device)
    config = loaded.config
    description = load_training_data(args.data)
    started = time.perf_counter()
    cases = description.preprocessed_cases("training", config.preprocess)[: args.cases]
    print(f"{len(cases)} training cases read and preprocessed in {time.perf_counter() - started:.1f} s")
    window, field_of_view = config.preprocess.spatial_size, FieldOfViewConfig()
    variants = {
        "field of view, no augmentation": None,
        "default augmentation": AugmentConfig(),
        "affine on every sample": replace(AugmentConfig(), affine_probability=1.0),
    }
    places = [("CPU (one loader worker)", None)] + ([("device", device)] if device.type != "cpu" else [])
    for place, where in places:
        for what, augment in variants.items():
            dataset = DetectionDataset(cases, window, augment, field_of_view, device=where)
            seconds = seconds_per_sample(dataset, args.rounds, synchronize)
            print(f"sample on the {place}, {what}: {seconds:.3f} s ({1 / seconds:.1f} samples/s)")

    model = loaded.model.train()
    criterion = SetCriterion(
        len(config.class_names), DenseQueryMatcher(config.matcher), config.loss, class_names=config.class_names
    ).to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.train.lr)
    dataset = DetectionDataset(cases, window, AugmentConfig(), field_of_view, device=device)
    images, targets, _ = collate([dataset[i % len(dataset)] for i in range(args.batch_size)])
    targets = [{k: v.to(device) for k, v in target.items()} for target in targets]
    amp = torch.bfloat16 if device.type == "cuda" else None
    timings = []
    for _ in range(args.steps):
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            losses = criterion(model(images), targets)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        synchronize()
        timings.append(time.perf_counter() - started)
    step = min(timings)
    print(
        f"shipped model, batch {args.batch_size} on {device}, {torch.get_num_threads()} threads: {step:.2f} s/step "
        f"(best of {args.steps}): {args.batch_size / step:.1f} samples/s consumed"
    )


if __name__ == "__main__":
    main()
