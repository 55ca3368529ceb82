"""Overfit test: the ``small`` network trained on one real head-and-neck CT finds every organ it saw.

OpenKBP pt_201 goes through the shared preprocessing and target building, the real criterion (Dense Query Matching,
classification + L1 + GIoU + segmentation losses, auxiliary layers) trains the ``small`` preset with AdamW and no
augmentation, and the shared inference path decodes one box per organ, which must overlap its ground truth with
IoU > 0.7 and carry the right class. About 25 s on 2 CPU cores, so it runs in the default suite
(``-s`` prints per-organ IoU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import SimpleITK as sitk
import torch
from organdetr.box_ops import pairwise_iou
from organdetr.config import DetectorConfig, preset_config
from organdetr.criterion import SetCriterion
from organdetr.dataset import make_target
from organdetr.inference import run_detector
from organdetr.matcher import DenseQueryMatcher
from organdetr.organ_detr import OrganDETR, build_model
from organdetr.preprocess import PreprocessedVolume, preprocess_image, preprocess_label

# Half the small preset's 128^3 grid: a CPU training step takes ~0.1 s instead of ~1 s, and the thinnest organs
# (brainstem, cords, larynx) are still 2-3 voxels wide across their short axes.
SPATIAL_SIZE = (64, 64, 64)
STEPS = 200
LR = 3e-3
WARMUP_FRACTION = 0.1  # of STEPS, linear warm-up before the cosine decay
SEED = 0
MIN_IOU = 0.7
MIN_SCORE = 0.5  # a class probability above one half makes that class the query's top-scoring one


@dataclass
class OverfitRun:
    """A trained network, the volume it saw and its target."""

    model: OrganDETR
    volume: PreprocessedVolume
    target: dict[str, torch.Tensor]
    config: DetectorConfig
    steps: int
    seconds: float


def overfit(ct_path: Path, label_path: Path, steps: int, lr: float, seed: int) -> OverfitRun:
    """Train the ``small`` network on one CT and its organ label map for ``steps`` AdamW steps (no augmentation)."""
    torch.manual_seed(seed)
    config = preset_config("small")
    config = replace(config, preprocess=replace(config.preprocess, spatial_size=SPATIAL_SIZE))
    num_classes = config.model.num_classes
    volume = preprocess_image(sitk.ReadImage(str(ct_path)), config.preprocess)
    label_map = preprocess_label(sitk.ReadImage(str(label_path)), config.preprocess)
    target = make_target(label_map, annotated=torch.ones(num_classes, dtype=torch.bool))

    model = build_model(config.model).train()
    criterion = SetCriterion(num_classes, DenseQueryMatcher(config.matcher), config.loss)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=steps, pct_start=WARMUP_FRACTION, anneal_strategy="cos"
    )
    images = volume.image[None]
    started = time.monotonic()
    for step in range(steps):
        loss = criterion(model(images), [target])["loss"]
        if not torch.isfinite(loss):
            raise AssertionError(f"non-finite loss {float(loss)} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
        scheduler.step()
    return OverfitRun(model, volume, target, config, steps, time.monotonic() - started)


def test_small_model_overfits_one_real_ct(head_neck_case) -> None:
    run = overfit(*head_neck_case, steps=STEPS, lr=LR, seed=SEED)
    class_names = run.config.class_names
    # Every organ survives the resize to the reduced grid, so the test covers all of them.
    assert run.target["labels"].tolist() == list(range(len(class_names)))

    organs = run_detector(run.model, run.volume, torch.device("cpu"), run.config).organs
    assert [organ.class_index for organ in organs] == list(range(len(class_names)))
    predicted = torch.stack([organ.box for organ in organs])
    iou = pairwise_iou(predicted, run.target["boxes"])  # [predicted organ, ground-truth organ]

    print(f"\noverfit: {run.steps} steps in {run.seconds:.1f} s ({run.seconds / run.steps:.3f} s/step)")
    for organ in organs:
        k = organ.class_index
        print(f"  {class_names[k]:<13} IoU {float(iou[k, k]):.3f}  score {organ.score:.3f}")

    for organ in organs:
        k = organ.class_index
        assert float(iou[k, k]) > MIN_IOU, f"{class_names[k]}: box IoU {float(iou[k, k]):.3f}"
        assert organ.score > MIN_SCORE, f"{class_names[k]}: its best query scores only {organ.score:.3f}"
        # The box found for organ k overlaps organ k's ground truth more than any other organ's.
        assert int(iou[k].argmax()) == k, f"{class_names[k]}: box lies on {class_names[int(iou[k].argmax())]}"
