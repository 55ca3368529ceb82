"""``organdetr train``: train a detector on an MSD-style dataset.json, single process or torch.distributed.

Run folder layout (``--output``)::

    last/         model.safetensors + config.json (organdetr.checkpoint) + training_state.pt + metrics.json
    best/         the checkpoint with the best validation mAP so far (+ its metrics.json)
    history.json  one row per epoch (or partial epoch before an interruption); metrics.csv is the same as CSV
    training_curves.png, tensorboard/ (when TensorBoard is installed)

``last/`` is written after every epoch and when ``--max-steps`` or ``--time-limit-minutes`` stops the run, so
``--resume`` continues with identical model, optimiser, scheduler, gradient-scaler, RNG and data-order state. Only
rank 0 writes. Multi-GPU / multi-node: launch with ``torchrun`` (DistributedDataParallel; nccl on CUDA, gloo on CPU).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .atomic_file import atomic_path, atomic_write_text
from .errors import UserInputError

TRAINING_STATE_FILE = "training_state.pt"
HISTORY_FILE = "history.json"
CSV_FILE = "metrics.csv"
PLOT_FILE = "training_curves.png"
# The cosine decay ends at this fraction of the peak learning rate.
FINAL_LR_FRACTION = 0.01
VALIDATION_KEYS = ("mAP", "AP50", "AP75", "mAR", "mAP_nndet")
# Soft-tissue window (HU) of --soft-tissue-channel: the organs sit in 5-10 % of the main [-1000, 1000] window.
SOFT_TISSUE_HU = (-160.0, 240.0)
# Layers that a fine-tuning run may add to the network it starts from (initialised anew).
ADDED_LAYERS = ("seg_branch.", "decoder.quality_head.", "presence_head.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="MSD-style dataset.json (training + validation)")
    parser.add_argument("--output", required=True, type=Path, help="run folder (checkpoints, logs, curves)")
    parser.add_argument("--preset", default="small", choices=("small", "paper"), help="network size (default small)")
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
        "--oversample-rare-organs",
        type=float,
        default=None,
        metavar="POWER",
        help="visit cases of rarely annotated organs more often: weight (cases / cases with the organ) ** POWER "
        "(0 = uniform, the default; 0.5 = square-root balancing)",
    )
    parser.add_argument(
        "--soft-tissue-channel",
        action="store_true",
        help=f"add a second input channel, the soft-tissue HU window {SOFT_TISSUE_HU}; with --init-weights the "
        "first convolution's new input channel starts at zero",
    )
    parser.add_argument("--no-augment", action="store_true", help="train without random augmentation")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None, help="data loader worker processes per rank")
    parser.add_argument("--val-every", type=int, default=None, help="validate every N epochs (default 1)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
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
        "--threads",
        type=int,
        default=None,
        help="CPU threads for this process (default: one per core that other programs leave free, with passive "
        "OpenMP waiting, as for every organdetr command)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="also keep preprocessed volumes on disk here (reused by later runs and --resume)",
    )


@dataclass
class RunLimits:
    """When this invocation stops early (both ``None``: train to the end of the schedule)."""

    max_steps: int | None = None
    time_limit_s: float | None = None


@dataclass
class TrainingState:
    """Progress that ``--resume`` restores besides the weights."""

    epoch: int = 0  # current epoch (0-based)
    step_in_epoch: int = 0  # optimiser steps already done in the current epoch
    global_step: int = 0
    best_map: float = -1.0
    loss_sums: dict[str, float] = field(default_factory=dict)  # running sums of the current epoch
    elapsed_s: float = 0.0  # training wall time over all invocations


@dataclass
class Distributed:
    """This process's place in a torch.distributed job (world size 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_name: str):
    """Join the torchrun job if there is one (env:// rendezvous); returns (Distributed, torch.device)."""
    import torch
    import torch.distributed as dist

    from .inference import select_device

    device = select_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(), device
    context = Distributed(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return context, device


def _build_config(args: argparse.Namespace, description, initial=None) -> Any:
    """A new run's DetectorConfig: preset, --config or --init-weights' model, with the command-line overrides."""
    from .config import DetectorConfig, preset_config

    if initial is not None:
        if args.config is not None or args.spatial_size is not None or args.no_msa:
            raise UserInputError("--init-weights fixes the network: drop --config, --spatial-size and --no-msa")
        config = initial.config
        description.check_class_names(config.class_names)
    elif args.config is not None:
        try:
            config = DetectorConfig.from_json_file(args.config)
        except (OSError, ValueError, TypeError) as error:
            raise UserInputError(f"invalid --config {args.config}: {error}") from None
        description.check_class_names(config.class_names)
    else:
        config = preset_config(args.preset, description.class_names)
    overrides = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "lr_backbone": args.lr_backbone if args.lr_backbone is not None else args.lr,
        "warmup_steps": args.warmup_steps,
        "seed": args.seed,
        "num_workers": args.workers,
        "val_every": args.val_every,
        "oversample_rare_organs": args.oversample_rare_organs,
        "train_only": tuple(args.train_only or ()),  # a choice of this run, never inherited from --init-weights
    }
    train = replace(config.train, **{k: v for k, v in overrides.items() if v is not None})
    if args.no_augment:
        train = replace(train, augment=False)
    for name in ("epochs", "batch_size", "val_every"):
        if getattr(train, name) < 1:
            raise UserInputError(f"--{name.replace('_', '-')} must be at least 1")
    if train.lr <= 0 or train.lr_backbone <= 0:
        raise UserInputError("--lr and --lr-backbone must be positive")
    if not 0.0 <= train.oversample_rare_organs <= 2.0:
        raise UserInputError("--oversample-rare-organs must be between 0 and 2")
    matcher = config.matcher
    if args.dense_lambda is not None:
        if not 0.0 <= args.dense_lambda < 1.0:
            raise UserInputError("--dense-lambda must be in [0, 1)")
        matcher = replace(matcher, dense_lambda=args.dense_lambda)
    preprocess = config.preprocess
    if args.spatial_size is not None:
        preprocess = replace(preprocess, spatial_size=tuple(args.spatial_size))
    target_spacing = args.target_spacing
    if target_spacing is None and initial is None and args.config is None:
        target_spacing = ["auto"]
    if target_spacing is not None:
        preprocess = replace(preprocess, target_spacing_mm=_target_spacing(target_spacing, description, preprocess))
    model = config.model
    if args.no_msa:
        model = replace(model, msa=replace(model.msa, enabled=False))
    if args.segmentation_branch:
        model = replace(model, segmentation_branch=replace(model.segmentation_branch, enabled=True))
    if args.quality_head:
        model = replace(model, quality_head=True)
    if args.presence_head or args.presence_levels is not None:
        model = replace(model, presence_head=True, presence_levels=args.presence_levels or model.presence_levels)
    if args.soft_tissue_channel and SOFT_TISSUE_HU not in preprocess.extra_hu_windows:
        preprocess = replace(preprocess, extra_hu_windows=(*preprocess.extra_hu_windows, SOFT_TISSUE_HU))
        model = replace(model, backbone=replace(model.backbone, in_channels=model.backbone.in_channels + 1))
    return replace(
        config,
        name=args.output.name,
        train=train,
        matcher=matcher,
        model=model,
        preprocess=preprocess,
        training_data=description.summary() | _initialised_from(initial),
    )


def _target_spacing(values: list[str], description, preprocess) -> tuple[float, float, float] | None:
    """``--target-spacing`` -> the stored value (see its help)."""
    from .dataset import median_spacing

    if values == ["auto"]:
        return median_spacing(description.splits["training"], preprocess.orientation)
    if values == ["none"]:
        return None
    try:
        spacing = tuple(float(v) for v in values)
    except ValueError:
        spacing = ()
    if len(spacing) != 3 or not all(0.1 <= v <= 20.0 for v in spacing):
        raise UserInputError("--target-spacing takes 3 values in mm between 0.1 and 20, 'auto' or 'none'")
    return spacing  # type: ignore[return-value]


def _widened(value, wanted):
    """A conv weight with fewer input channels than ``wanted`` gets zero weights for the new ones."""
    import torch

    grows = (
        wanted is not None
        and value.dim() == wanted.dim() == 5
        and value.shape[0] == wanted.shape[0]
        and value.shape[2:] == wanted.shape[2:]
        and value.shape[1] < wanted.shape[1]
    )
    if not grows:
        return value
    return torch.cat([value, value.new_zeros(value.shape[0], wanted.shape[1] - value.shape[1], *value.shape[2:])], 1)


def _extended(initial_model, model_config):
    """The fine-tuning network: ``initial_model`` itself, or with what the run adds: new heads (initialised anew)
    and new input channels (their first-convolution weights start at zero, so the network starts as it was)."""
    from .organ_detr import build_model

    if initial_model.config == model_config:
        return initial_model
    model = build_model(model_config)
    target = model.state_dict()
    state = {name: _widened(value, target.get(name)) for name, value in initial_model.state_dict().items()}
    unmatched = [name for name, value in state.items() if name not in target or target[name].shape != value.shape]
    missing = [name for name in target if name not in state]
    if unmatched or not all(name.startswith(ADDED_LAYERS) for name in missing):
        raise UserInputError("--init-weights: the given model's network does not match this run's")
    model.load_state_dict(state, strict=False)
    return model


def _initialised_from(initial) -> dict[str, Any]:
    """Provenance of fine-tuned weights, recorded with the run's config."""
    if initial is None:
        return {}
    return {
        "initialised_from": {
            "name": initial.config.name,
            "version": initial.config.version,
            "weights_sha256": initial.weights_sha256,
            "training_data": initial.config.training_data,
        }
    }


def _resume_config(args: argparse.Namespace, last: Path) -> Any:
    """On --resume everything comes from the checkpoint; only --workers may change (it does not alter results)."""
    from .config import DetectorConfig

    config = DetectorConfig.from_json_file(last / "config.json")
    if args.workers is not None:
        config = replace(config, train=replace(config.train, num_workers=args.workers))
    return config


def _lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to 1, then cosine decay to FINAL_LR_FRACTION at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return FINAL_LR_FRACTION + (1.0 - FINAL_LR_FRACTION) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Trainer:
    """One training run: data, model, optimisation, validation, checkpoints and logs."""

    def __init__(self, args: argparse.Namespace):
        import torch
        import torch.distributed as dist

        from .checkpoint import load_checkpoint
        from .criterion import SetCriterion
        from .dataset import CaseCache, DetectionDataset, available_splits, load_dataset_json
        from .matcher import DenseQueryMatcher
        from .organ_detr import build_model
        from .sampling import RareOrganSampler, rare_organ_weights

        self.output: Path = args.output
        self.limits = RunLimits(
            max_steps=args.max_steps,
            time_limit_s=None if args.time_limit_minutes is None else 60.0 * args.time_limit_minutes,
        )
        last = self.output / "last"
        self.dist, self.device = _init_distributed(args.device)
        if args.resume:
            if not (last / TRAINING_STATE_FILE).is_file():
                raise UserInputError(f"nothing to resume: {last / TRAINING_STATE_FILE} does not exist")
        elif self.output.exists() and any(self.output.iterdir()):
            raise UserInputError(f"{self.output} is not empty; pass --resume to continue it or choose a new folder")
        if self.dist.world_size > 1:
            dist.barrier()  # every rank has checked the run folder before rank 0 writes into it
        splits = ["training"] + (["validation"] if "validation" in available_splits(args.data) else [])
        description = load_dataset_json(args.data, splits)
        if args.resume and args.init_weights is not None:
            raise UserInputError("--init-weights starts a new run; it cannot be combined with --resume")
        initial = None if args.init_weights is None else load_checkpoint(args.init_weights, "cpu")
        self.config = _resume_config(args, last) if args.resume else _build_config(args, description, initial)
        description.check_class_names(self.config.class_names)
        train_config = self.config.train
        self.class_names = self.config.class_names

        torch.manual_seed(train_config.seed)  # identical initial weights on every rank
        if args.resume:
            self.model = load_checkpoint(last, self.device).model.train()
        elif initial is not None:
            self.model = _extended(initial.model, self.config.model).to(self.device).train()
        else:
            self.model = build_model(self.config.model).to(self.device)
        try:
            self.model.check_input_size(tuple(self.config.preprocess.spatial_size))
        except ValueError as error:
            raise UserInputError(f"--spatial-size: {error}") from None

        cache = CaseCache(self.class_names, self.config.preprocess, args.cache_dir)
        self.train_cases = self._preload(cache, description.splits["training"], "training")
        self.val_cases = (
            self._preload(cache, description.splits["validation"], "validation")
            if "validation" in description.splits and self.dist.is_main
            else []
        )
        self.dataset = DetectionDataset(
            self.train_cases,
            self.config.preprocess.spatial_size,
            augment=train_config.augmentation if train_config.augment else None,
            field_of_view=train_config.field_of_view if train_config.augment else None,
            seed=train_config.seed,
        )
        if train_config.oversample_rare_organs > 0:
            weights = rare_organ_weights(
                [case.annotated for case in self.train_cases], train_config.oversample_rare_organs
            )
            self.sampler = RareOrganSampler(weights, self.dist.world_size, self.dist.rank, train_config.seed)
        else:
            self.sampler = torch.utils.data.DistributedSampler(
                self.dataset,
                num_replicas=self.dist.world_size,
                rank=self.dist.rank,
                shuffle=True,
                seed=train_config.seed,
            )
        self.steps_per_epoch = math.ceil(len(self.sampler) / train_config.batch_size)
        self.total_steps = self.steps_per_epoch * train_config.epochs

        torch.manual_seed(train_config.seed + 1 + self.dist.rank)  # dropout differs between ranks
        self.criterion = SetCriterion(
            len(self.class_names), DenseQueryMatcher(self.config.matcher), self.config.loss
        ).to(self.device)
        if train_config.train_only:
            for name, parameter in self.model.named_parameters():
                parameter.requires_grad_(name.startswith(train_config.train_only))
        backbone = [p for n, p in self.model.named_parameters() if n.startswith("backbone") and p.requires_grad]
        rest = [p for n, p in self.model.named_parameters() if not n.startswith("backbone") and p.requires_grad]
        groups = [{"params": backbone, "lr": train_config.lr_backbone}, {"params": rest, "lr": train_config.lr}]
        self.optimizer = torch.optim.AdamW(
            groups,
            lr=train_config.lr,
            weight_decay=train_config.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: _lr_factor(step, train_config.warmup_steps, self.total_steps)
        )
        self.amp_dtype = None
        if train_config.amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.state = TrainingState()
        self.history: list[dict[str, Any]] = []
        if args.resume:
            self._load_state(last)
        self.network = self.model
        if self.dist.world_size > 1:
            self.network = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.tensorboard = self._open_tensorboard()

    # ----------------------------------------------------------------------------------------------------- setup
    def _preload(self, cache, records, split: str) -> list:
        """Preprocess every case once (before any loader workers fork, so they share the cache)."""
        from tqdm import tqdm

        bar = tqdm(records, desc=f"preprocess {split}", unit="case", disable=not self.dist.is_main, **_tqdm_kwargs())
        return [cache.get(record) for record in bar]

    def _open_tensorboard(self):
        if not self.dist.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(str(self.output / "tensorboard"))

    def _load_state(self, last: Path) -> None:
        import torch

        saved = torch.load(last / TRAINING_STATE_FILE, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        self.state = TrainingState(**json.loads(saved["progress"]))
        torch.set_rng_state(saved["rng_cpu"][self.dist.rank % len(saved["rng_cpu"])])
        if self.device.type == "cuda" and saved.get("rng_cuda"):
            torch.cuda.set_rng_state(saved["rng_cuda"][self.dist.rank % len(saved["rng_cuda"])], self.device)
        history_file = self.output / HISTORY_FILE
        self.history = json.loads(history_file.read_text(encoding="utf-8")) if history_file.is_file() else []

    # ----------------------------------------------------------------------------------------------- checkpoints
    def _gather_rng(self):
        """Every rank's RNG states (so each rank resumes its own dropout stream)."""
        import torch
        import torch.distributed as dist

        cpu = [torch.get_rng_state()]
        cuda = [torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda" else []
        if self.dist.world_size > 1:
            gathered: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(gathered, (cpu[0], cuda[0] if cuda else None))
            cpu = [state[0] for state in gathered]
            cuda = [state[1] for state in gathered] if cuda else []
        return cpu, cuda

    def _save(self, name: str, metrics: dict[str, Any] | None, rng: tuple[list, list] | None = None) -> None:
        """Write a complete checkpoint folder next to the old one, then swap it in (never a half-written last/).

        Only ``last`` (given every rank's ``rng`` states) carries the training state that ``--resume`` needs.
        """
        import torch

        from .checkpoint import save_checkpoint

        final = self.output / name
        partial = self.output / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        save_checkpoint(partial, self.model, self.config)
        if rng is not None:
            rng_cpu, rng_cuda = rng
            state = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "progress": json.dumps(self.state.__dict__),
                "rng_cpu": rng_cpu,
                "rng_cuda": rng_cuda,
            }
            torch.save(state, partial / TRAINING_STATE_FILE)
        if metrics is not None:
            (partial / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        old = self.output / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        partial.rename(final)
        shutil.rmtree(old, ignore_errors=True)

    # ----------------------------------------------------------------------------------------------------- loop
    def _to_device(self, targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in targets]

    def _step(self, images, targets) -> dict[str, float]:
        import torch

        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            outputs = self.network(images.to(self.device, non_blocking=True))
            losses = self.criterion(outputs, self._to_device(targets))
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss {float(loss)} at step {self.state.global_step}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        # Auxiliary decoder-layer terms are in "loss"; log the final layer's terms only.
        return {k: float(v.detach()) for k, v in losses.items() if v.dim() == 0 and "_aux" not in k}

    def _limit_reached(self, started: float) -> str | None:
        if self.limits.max_steps is not None and self.state.global_step >= self.limits.max_steps:
            return f"--max-steps {self.limits.max_steps} reached"
        if self.limits.time_limit_s is None:
            return None
        expired = time.monotonic() - started >= self.limits.time_limit_s
        if self.dist.world_size > 1:  # clocks differ: all ranks must stop after the same step
            import torch
            import torch.distributed as dist

            flag = torch.tensor([float(expired)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            expired = bool(flag.item())
        return f"--time-limit-minutes {self.limits.time_limit_s / 60:g} reached" if expired else None

    def _mean_losses(self) -> dict[str, float]:
        """Epoch means of the losses over all ranks."""
        import torch
        import torch.distributed as dist

        keys = sorted(self.state.loss_sums)
        sums = torch.tensor([self.state.loss_sums[k] for k in keys], dtype=torch.float64)
        if self.dist.world_size > 1:
            dist.all_reduce(sums)
        steps = max(1, self.state.step_in_epoch) * self.dist.world_size
        return {k: float(v) / steps for k, v in zip(keys, sums, strict=True)}

    def validate(self) -> dict[str, Any] | None:
        """Validation metrics on rank 0 (``None`` without a validation split); other ranks wait."""
        import torch.distributed as dist

        from .evaluate import evaluate_cases

        result = None
        if self.dist.is_main and self.val_cases:
            metrics = evaluate_cases(self.model, self.val_cases, self.config, self.device)
            result = metrics.to_dict()
        if self.dist.world_size > 1:
            dist.barrier()
        return result

    def train(self) -> int:
        """Train until the schedule ends or a limit stops this invocation; returns the exit code."""
        import torch
        from tqdm import tqdm

        from .dataset import collate

        train_config = self.config.train
        started = time.monotonic()
        stop_reason = None
        if self.state.epoch >= train_config.epochs:
            print(f"{self.output}: the run already finished its {train_config.epochs} epochs", file=sys.stderr)
            return 0
        if self.dist.is_main and train_config.warmup_steps >= self.total_steps:
            print(
                f"warning: --warmup-steps {train_config.warmup_steps} >= the run's {self.total_steps} steps: the "
                "learning rate never reaches its peak",
                file=sys.stderr,
            )
        if self.dist.is_main:
            print(
                f"training {sum(p.numel() for p in self.model.parameters()) / 1e6:.2f} M parameters on "
                f"{self.device} x{self.dist.world_size}: {len(self.train_cases)} training / {len(self.val_cases)} "
                f"validation cases, {self.steps_per_epoch} steps per epoch, epochs {self.state.epoch + 1}.."
                f"{train_config.epochs}",
                file=sys.stderr,
            )
        while self.state.epoch < train_config.epochs and stop_reason is None:
            epoch = self.state.epoch
            segment_started = time.monotonic()
            self.sampler.set_epoch(epoch)
            self.dataset.set_epoch(epoch)
            order = list(self.sampler)[self.state.step_in_epoch * train_config.batch_size :]
            loader = torch.utils.data.DataLoader(
                self.dataset,
                batch_size=train_config.batch_size,
                sampler=order,
                num_workers=train_config.num_workers,
                collate_fn=collate,
                pin_memory=self.device.type == "cuda",
                generator=torch.Generator().manual_seed(train_config.seed + epoch),
            )
            bar = tqdm(
                loader,
                desc=f"epoch {epoch + 1}/{train_config.epochs}",
                unit="step",
                initial=self.state.step_in_epoch,
                total=self.steps_per_epoch,
                disable=not self.dist.is_main,
                **_tqdm_kwargs(),
            )
            for images, targets, _names in bar:
                losses = self._step(images, targets)
                for key, value in losses.items():
                    self.state.loss_sums[key] = self.state.loss_sums.get(key, 0.0) + value
                self.state.step_in_epoch += 1
                self.state.global_step += 1
                lr = self.scheduler.get_last_lr()[-1]
                bar.set_postfix(loss=f"{losses['loss']:.3f}", lr=f"{lr:.2e}", refresh=False)
                stop_reason = self._limit_reached(started)
                if stop_reason is not None:
                    break
            bar.close()
            complete = self.state.step_in_epoch >= self.steps_per_epoch
            self._end_segment(epoch, complete, stop_reason is not None, time.monotonic() - segment_started)
        if self.dist.is_main:
            self._plot()
            if self.tensorboard is not None:
                self.tensorboard.close()
            done = "finished" if stop_reason is None else f"stopped ({stop_reason}); continue with --resume"
            print(f"training {done}; checkpoints in {self.output}", file=sys.stderr)
        return 0

    def _end_segment(self, epoch: int, complete: bool, stopping: bool, seconds: float) -> None:
        """After an epoch (or the part of one before a stop): log, validate, checkpoint."""
        train_config = self.config.train
        losses = self._mean_losses()
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "complete": int(complete),
            "step": self.state.global_step,
            "lr": self.scheduler.get_last_lr()[-1],
            "time_s": round(seconds, 1),
            "elapsed_s": round(self.state.elapsed_s + seconds, 1),
        }
        row.update({f"train_{k}": v for k, v in losses.items()})
        last_epoch = epoch + 1 == train_config.epochs
        validate = stopping or last_epoch or (complete and (epoch + 1) % train_config.val_every == 0)
        metrics = self.validate() if validate else None
        if metrics is not None:
            row.update({f"val_{k}": metrics[k] for k in VALIDATION_KEYS})
        self.state.elapsed_s += seconds
        if complete:
            self.state.epoch += 1
            self.state.step_in_epoch = 0
            self.state.loss_sums = {}
        improved = metrics is not None and metrics["mAP"] is not None and metrics["mAP"] > self.state.best_map
        if improved:
            self.state.best_map = metrics["mAP"]
        rng = self._gather_rng()  # collective: every rank takes part
        if not self.dist.is_main:
            return
        self._save("last", metrics, rng)
        if improved:
            self._save("best", metrics)
        self.history.append(row)
        self._write_logs(row)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float) and k != "lr")
        print(f"epoch {epoch + 1} step {self.state.global_step} lr {row['lr']:.2e}: {shown}", file=sys.stderr)

    # ------------------------------------------------------------------------------------------------------ logs
    def _write_logs(self, row: dict[str, Any]) -> None:
        atomic_write_text(self.output / HISTORY_FILE, json.dumps(self.history, indent=1))
        columns: list[str] = []
        for entry in self.history:
            columns.extend(k for k in entry if k not in columns)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(self.history)
        atomic_write_text(self.output / CSV_FILE, buffer.getvalue())
        if self.tensorboard is not None:
            for key, value in row.items():
                if isinstance(value, float):
                    self.tensorboard.add_scalar(key.replace("_", "/", 1), value, row["step"])
            self.tensorboard.flush()

    def _plot(self) -> None:
        """Loss and validation curves against the optimiser step (matplotlib, Agg)."""
        if not self.history:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        series = defaultdict(list)
        for row in self.history:
            for key, value in row.items():
                if isinstance(value, float) and (key == "train_loss" or key.startswith("val_")):
                    series[key].append((row["step"], value))
        figure, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
        if series["train_loss"]:
            loss_ax.plot(*zip(*series["train_loss"], strict=True), marker=".", label="training loss")
        loss_ax.set(xlabel="step", ylabel="loss", title="training loss")
        for key in (f"val_{k}" for k in VALIDATION_KEYS):
            if series.get(key):
                val_ax.plot(*zip(*series[key], strict=True), marker=".", label=key[4:])
        val_ax.set(xlabel="step", ylabel="fraction", title="validation", ylim=(0, 1))
        for ax in (loss_ax, val_ax):
            ax.grid(alpha=0.3)
            ax.legend()
        figure.tight_layout()
        with atomic_path(self.output / PLOT_FILE, suffix=".png") as temporary:
            figure.savefig(temporary, dpi=90)
        plt.close(figure)


def _tqdm_kwargs() -> dict[str, Any]:
    """Live bar on a terminal; sparse updates in a log file."""
    return {"mininterval": 1.0 if sys.stderr.isatty() else 60.0, "file": sys.stderr, "dynamic_ncols": True}


def run(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist

    if args.max_steps is not None and args.max_steps < 1:
        raise UserInputError("--max-steps must be at least 1")
    if args.time_limit_minutes is not None and args.time_limit_minutes <= 0:
        raise UserInputError("--time-limit-minutes must be positive")
    if args.threads is not None:
        if args.threads < 1:
            raise UserInputError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    trainer = Trainer(args)
    trainer.output.mkdir(parents=True, exist_ok=True)
    try:
        return trainer.train()
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
