"""``organdetr train``: train a detector on an MSD-style dataset.json, single process or torch.distributed.

Run folder layout (``--output``)::

    last/         model.safetensors + config.json (organdetr.checkpoint) + training_state.pt + metrics.json
    best/         the checkpoint with the best validation mAP so far (+ its metrics.json)
    history.json  one row per epoch (or partial epoch before an interruption); metrics.csv is the same as CSV
    training_curves.png, tensorboard/ (when TensorBoard is installed)

``last/`` is written after every epoch and when ``--max-steps`` or ``--time-limit-minutes`` stops the run, so
``--resume`` continues with identical model, optimiser, scheduler, gradient-scaler, RNG and data-order state. Only
rank 0 writes. Multi-GPU / multi-node: launch with ``torchrun`` (DistributedDataParallel; nccl on CUDA, gloo on CPU).

This module is the command line only: the options become a :class:`~organdetr.run_options.RunOptions` (where and how
long) and a :class:`~organdetr.run_config.ConfigChoices` (what to train, :mod:`organdetr.run_config`), and
:class:`~organdetr.trainer.Trainer` runs. ``--threads`` is the ``organdetr`` command line's, as for every command.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TypeVar

from .config import PRESETS
from .run_config import SOFT_TISSUE_HU, ConfigChoices
from .run_options import RunOptions

Options = TypeVar("Options")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        required=True,
        type=Path,
        help="MSD-style dataset.json (training + validation) or a training pack (organdetr pack)",
    )
    parser.add_argument("--output", required=True, type=Path, help="run folder (checkpoints, logs, curves)")
    parser.add_argument(
        "--preset", default=ConfigChoices.preset, choices=tuple(PRESETS), help="network size (default small)"
    )
    parser.add_argument("--config", type=Path, default=None, help="start from this DetectorConfig JSON, not a preset")
    parser.add_argument(
        "--spatial-size",
        type=int,
        nargs=3,
        default=None,
        metavar=("D0", "D1", "D2"),
        help="network input grid (default 128 128 128; multiples of 32), stored with the model",
    )
    parser.add_argument(
        "--target-spacing",
        nargs="+",
        default=None,
        metavar="MM",
        help="network voxel size: 3 values in mm, 'auto' (the training images' median spacing; the default for new "
        "runs) or 'none' (legacy: resize every scan to --spatial-size); stored with the model",
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="per process")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (AdamW, default 2e-4)")
    parser.add_argument(
        "--lr-backbone", type=float, default=None, help="peak learning rate of the CNN backbone (default: --lr)"
    )
    parser.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps before cosine decay")
    parser.add_argument(
        "--dense-lambda",
        type=float,
        default=None,
        help="Dense Query Matching lambda (0 = one-to-one Hungarian; default 0.2)",
    )
    parser.add_argument("--no-msa", action="store_true", help="baseline without the MultiScale Attention encoder")
    parser.add_argument(
        "--segmentation-branch",
        action="store_true",
        help="add the full-resolution segmentation branch (box refinement, segmentation preview); with "
        "--init-weights the new layers start untrained and everything else from the given model",
    )
    parser.add_argument(
        "--segmentation-stride",
        type=int,
        choices=(1, 2),
        default=None,
        help="the segmentation branch's finest output: 2 (stride 2) or 1 (adds the fine stage on the input grid, "
        "whose boxes can be precise; new layers start as the upsampled stride-2 logits); implies "
        "--segmentation-branch",
    )
    parser.add_argument(
        "--fine-channels",
        type=int,
        default=None,
        metavar="N",
        help="channels of the segmentation branch's fine stage (8 in the presets); a trained fine stage (from "
        "--init-weights) may only grow: its new channels start with zero weight in the output, so the run starts from "
        "the given model's segmentation",
    )
    parser.add_argument(
        "--quality-head", action="store_true", help="add the IoU-quality head (scores rank boxes by predicted IoU)"
    )
    parser.add_argument(
        "--presence-head",
        action="store_true",
        help="add the image-level presence head (per organ: is it in the scan?), trained on field-of-view cuts",
    )
    parser.add_argument(
        "--presence-levels",
        type=int,
        default=None,
        metavar="N",
        help="pyramid levels the presence head pools, coarsest first (default 1; implies --presence-head)",
    )
    parser.add_argument(
        "--train-only",
        nargs="+",
        default=None,
        metavar="PREFIX",
        help="train only the parameters whose names start with these prefixes (e.g. presence_head after "
        "--init-weights ... --presence-head); the rest stays as it is",
    )
    parser.add_argument(
        "--select-by",
        choices=("mAP", "Dice"),
        default=None,
        help="the validation figure that picks best/: the query boxes' mAP (default) or the segmentation branch's mean "
        "Dice over the organs (for runs that train only the branch)",
    )
    parser.add_argument(
        "--ema-decay",
        type=float,
        default=None,
        metavar="DECAY",
        help="validate, and keep as best/, the exponential moving average of the weights, moved by 1 - DECAY per "
        "step (e.g. 0.998: about the last 500 steps); last/ keeps the weights as trained, the average beside them "
        "for --resume; the validation of the trained weights is logged as val_raw_*",
    )
    parser.add_argument(
        "--oversample-rare-organs",
        type=float,
        default=None,
        metavar="POWER",
        help="visit cases of rarely annotated organs more often: weight (cases / cases with the organ) ** POWER "
        "(0 = uniform, the default; 0.5 = square-root balancing)",
    )
    parser.add_argument(
        "--seg-class-weight",
        nargs="+",
        default=None,
        metavar="ORGAN=WEIGHT",
        help="weight of an organ's voxels in the segmentation cross-entropy (default 1), e.g. Esophagus=30 for a "
        "thin, low-contrast organ the branch otherwise never segments",
    )
    parser.add_argument(
        "--soft-tissue-channel",
        action="store_true",
        help=f"add a second input channel, the soft-tissue HU window {SOFT_TISSUE_HU}; with --init-weights the "
        "first convolution's new input channel starts at zero",
    )
    parser.add_argument(
        "--no-augment", action="store_true", help="train without random augmentation or field-of-view cuts"
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None, help="data loader worker processes per rank")
    parser.add_argument("--val-every", type=int, default=None, help="validate every N epochs (default 1)")
    parser.add_argument("--device", default=RunOptions.device, choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--data-on-device",
        action="store_true",
        help="keep the training cases on the training device and cut and augment the windows there, in the training "
        "process (no loader workers): for a GPU, whose CPU-side loader workers cannot keep up with a large batch",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop (and checkpoint) after this many optimiser steps in total; the schedule still spans --epochs",
    )
    parser.add_argument(
        "--time-limit-minutes",
        type=float,
        default=None,
        help="stop (and checkpoint) after this much training time in this invocation",
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --output from last/")
    parser.add_argument(
        "--init-weights",
        default=None,
        help="start a new run from this model folder's weights (fine-tuning, e.g. 'default' for the shipped model); "
        "its network and preprocessing settings replace the preset's",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="also keep preprocessed volumes on disk here (reused by later runs and --resume)",
    )


def options_from_arguments(cls: type[Options], args: argparse.Namespace) -> Options:
    """The dataclass ``cls`` filled from the parsed options: its field names are the parser's destinations."""
    return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})  # type: ignore[arg-type]


def run(args: argparse.Namespace) -> int:
    from .distributed import close_distributed
    from .trainer import Trainer

    options = options_from_arguments(RunOptions, args)
    choices = options_from_arguments(ConfigChoices, args)
    try:
        return Trainer(options, choices).train()
    finally:
        close_distributed()
