"""Benchmark of the training pipeline on real OpenKBP cases: cached sample + augmentation time vs. network step time.

Usage: python benchmarks/training_pipeline.py [--data dataset.json] [--cases 4] [--steps 3] [--batch-size 2]
Prints seconds per sample for (a) the cached sample without augmentation, (b) with the default augmentation,
(c) with the affine part forced on every sample, and seconds per optimiser step of the `small` preset.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from organdetr.config import preset_config
from organdetr.criterion import SetCriterion
from organdetr.dataset import AugmentConfig, CaseCache, DetectionDataset, collate, load_dataset_json
from organdetr.matcher import DenseQueryMatcher
from organdetr.organ_detr import build_model


def seconds_per_sample(dataset: DetectionDataset, rounds: int) -> float:
    started = time.perf_counter()
    for epoch in range(rounds):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            dataset[index]
    return (time.perf_counter() - started) / (rounds * len(dataset))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="/work/shared/data/openkbp/dataset.json")
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--preset", default="small")
    args = parser.parse_args()

    description = load_dataset_json(args.data)
    config = preset_config(args.preset, description.class_names)
    cache = CaseCache(description.class_names, config.preprocess)
    started = time.perf_counter()
    cases = [cache.get(record) for record in description.splits["training"][: args.cases]]
    per_case = (time.perf_counter() - started) / len(cases)
    print(f"preprocess (NIfTI read + shared preprocessing), once per case: {per_case:.3f} s/case")
    always = replace(AugmentConfig(), affine_probability=1.0)
    for what, augment in (
        ("no augmentation", None),
        ("default augmentation", AugmentConfig()),
        ("affine always", always),
    ):
        print(f"cached sample, {what}: {seconds_per_sample(DetectionDataset(cases, augment), 2):.3f} s/sample")

    model = build_model(config.model)
    criterion = SetCriterion(len(description.class_names), DenseQueryMatcher(config.matcher), config.loss)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr)
    dataset = DetectionDataset(cases, AugmentConfig())
    images, targets, _ = collate([dataset[i % len(dataset)] for i in range(args.batch_size)])
    timings = []
    for _ in range(args.steps):
        started = time.perf_counter()
        losses = criterion(model(images), targets)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        timings.append(time.perf_counter() - started)
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"{args.preset} preset, batch {args.batch_size}, {torch.get_num_threads()} threads: "
        f"{min(timings):.2f} s/step (best of {args.steps}), {parameters:.2f} M parameters"
    )


if __name__ == "__main__":
    main()
