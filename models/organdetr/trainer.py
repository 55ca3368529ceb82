"""One training run: data, model, optimisation, validation, checkpoints and logs, single process or torch.distributed.

``last/`` is written after every epoch and when ``max_steps`` or ``time_limit_minutes`` stops the run, so a resumed
run continues with identical model, optimiser, scheduler, gradient-scaler, RNG and data-order state. Only rank 0
writes (:mod:`organdetr.run_folder`, :mod:`organdetr.training_log`).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from tqdm import tqdm

from .checkpoint import load_checkpoint
from .criterion import SetCriterion
from .dataset import DetectionDataset, collate
from .distributed import init_distributed
from .errors import UserInputError
from .evaluate import evaluate_cases
from .fine_tuning import extended_model
from .matcher import DenseQueryMatcher
from .optimizer import build_optimizer
from .organ_detr import build_model
from .run_config import ConfigChoices, new_run_config, resumed_config
from .run_folder import RunFolder
from .run_options import RunOptions
from .sampling import EpochOrder, RareOrganSampler, rare_organ_weights
from .training_log import VALIDATION_KEYS, TrainingLog
from .training_pack import load_training_data
from .weight_averaging import averaged_model


@dataclass
class TrainingState:
    """Progress that ``--resume`` restores besides the weights."""

    epoch: int = 0  # current epoch (0-based)
    step_in_epoch: int = 0  # optimiser steps already done in the current epoch
    global_step: int = 0
    best_map: float = -1.0  # the best validation figure of TrainConfig.select_by so far
    loss_sums: dict[str, float] = field(default_factory=dict)  # running sums of the current epoch
    elapsed_s: float = 0.0  # training wall time over all invocations


def _progress_bar_options() -> dict[str, Any]:
    """Live bar on a terminal; sparse updates in a log file."""
    return {"mininterval": 1.0 if sys.stderr.isatty() else 60.0, "file": sys.stderr, "dynamic_ncols": True}


class Trainer:
    """One training run: data, model, optimisation, validation, checkpoints and logs."""

    def __init__(self, options: RunOptions, choices: ConfigChoices):
        self.options = options
        self.folder = RunFolder(options.output)
        self.dist, self.device = init_distributed(options.device)
        self.folder.check_start(options.resume)
        self.dist.barrier()  # every rank has checked the run folder before rank 0 writes into it
        description = load_training_data(options.data)
        initial = None if options.init_weights is None else load_checkpoint(options.init_weights, "cpu")
        if options.resume:
            self.config = resumed_config(self.folder.last, choices.workers)
        else:
            self.config = new_run_config(choices, options.output.name, description, initial)
        description.check_class_names(self.config.class_names)
        train_config = self.config.train

        torch.manual_seed(train_config.seed)  # identical initial weights on every rank
        if options.resume:
            self.model = load_checkpoint(self.folder.last, self.device).model.train()
        elif initial is not None:
            self.model = extended_model(initial.model, self.config.model).to(self.device).train()
        else:
            self.model = build_model(self.config.model).to(self.device)
        try:
            self.model.check_input_size(tuple(self.config.preprocess.spatial_size))
        except ValueError as error:
            raise UserInputError(f"--spatial-size: {error}") from None

        self.train_cases = self._preload(description, "training")
        self.val_cases = (
            self._preload(description, "validation") if "validation" in description.splits and self.dist.is_main else []
        )
        self.dataset = DetectionDataset(
            self.train_cases,
            self.config.preprocess.spatial_size,
            augment=train_config.augmentation if train_config.augment else None,
            field_of_view=train_config.field_of_view if train_config.augment else None,
            seed=train_config.seed,
            device=self.device if options.data_on_device else None,
        )
        self.sampler = self._sampler()
        self.steps_per_epoch = math.ceil(len(self.sampler) / train_config.batch_size)
        self.total_steps = self.steps_per_epoch * train_config.epochs

        torch.manual_seed(train_config.seed + 1 + self.dist.rank)  # dropout differs between ranks
        self.criterion = SetCriterion(
            len(self.config.class_names),
            DenseQueryMatcher(self.config.matcher),
            self.config.loss,
            class_names=self.config.class_names,
        ).to(self.device)
        self.optimizer, self.scheduler = build_optimizer(self.model, train_config, self.total_steps)
        self.branch_trains = self.model.branch_trains()
        self.amp_dtype = None
        if train_config.amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        # The weights validated and kept as best/: their running average with --ema-decay, else the model itself.
        self.averaged = averaged_model(self.model, train_config.ema_decay) if train_config.ema_decay > 0 else None
        self.state = TrainingState()
        if options.resume:
            self._load_state()
        self.network = self.model
        if self.dist.world_size > 1:
            self.network = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.log = TrainingLog(self.folder.path, options.resume) if self.dist.is_main else None

    # ----------------------------------------------------------------------------------------------------- setup
    def _preload(self, description, split: str) -> list:
        """Every case of ``split`` preprocessed once (before any loader workers fork, so they share them)."""

        def progress(records):
            return tqdm(
                records,
                desc=f"preprocess {split}",
                unit="case",
                disable=not self.dist.is_main,
                **_progress_bar_options(),
            )

        return description.preprocessed_cases(split, self.config.preprocess, self.options.cache_dir, progress)

    def _sampler(self):
        """This rank's share of the training cases per epoch, uniform or favouring rarely annotated organs."""
        train_config = self.config.train
        if train_config.oversample_rare_organs > 0:
            weights = rare_organ_weights(
                [case.annotated for case in self.train_cases], train_config.oversample_rare_organs
            )
            return RareOrganSampler(weights, self.dist.world_size, self.dist.rank, train_config.seed)
        return torch.utils.data.DistributedSampler(
            self.dataset,
            num_replicas=self.dist.world_size,
            rank=self.dist.rank,
            shuffle=True,
            seed=train_config.seed,
        )

    def _load_state(self) -> None:
        saved = self.folder.training_state()
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        if self.averaged is not None:
            self.averaged.load_state_dict(saved["averaged_model"])
        self.state = TrainingState(**json.loads(saved["progress"]))
        torch.set_rng_state(saved["rng_cpu"][self.dist.rank % len(saved["rng_cpu"])])
        if self.device.type == "cuda" and saved.get("rng_cuda"):
            torch.cuda.set_rng_state(saved["rng_cuda"][self.dist.rank % len(saved["rng_cuda"])], self.device)

    # ----------------------------------------------------------------------------------------------- checkpoints
    def _training_state(self) -> dict[str, Any]:
        """What --resume restores besides the weights, with every rank's RNG states (so each rank resumes its own
        dropout stream). A collective: every rank takes part."""
        cuda = self.device.type == "cuda"
        states = self.dist.gather((torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if cuda else None))
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            **({"averaged_model": self.averaged.state_dict()} if self.averaged is not None else {}),
            "progress": json.dumps(self.state.__dict__),
            "rng_cpu": [state[0] for state in states],
            "rng_cuda": [state[1] for state in states] if cuda else [],
        }

    # ----------------------------------------------------------------------------------------------------- loop
    def _to_device(self, targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in targets]

    def _step(self, images, targets) -> dict[str, float]:
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            outputs = self.network(images.to(self.device, non_blocking=True), branch=self.branch_trains)
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
        if self.averaged is not None:
            self.averaged.update_parameters(self.model)
        # Auxiliary decoder-layer terms are in "loss"; log the final layer's terms only.
        return {k: float(v.detach()) for k, v in losses.items() if v.dim() == 0 and "_aux" not in k}

    def _limit_reached(self, started: float) -> str | None:
        max_steps, minutes = self.options.max_steps, self.options.time_limit_minutes
        if max_steps is not None and self.state.global_step >= max_steps:
            return f"--max-steps {max_steps} reached"
        if minutes is None:
            return None
        expired = self.dist.any(time.monotonic() - started >= 60.0 * minutes, self.device)
        return f"--time-limit-minutes {minutes:g} reached" if expired else None

    def _mean_losses(self) -> dict[str, float]:
        """Epoch means of the losses over all ranks."""
        keys = sorted(self.state.loss_sums)
        sums = self.dist.sum(torch.tensor([self.state.loss_sums[k] for k in keys], dtype=torch.float64))
        steps = max(1, self.state.step_in_epoch) * self.dist.world_size
        return {k: float(v) / steps for k, v in zip(keys, sums, strict=True)}

    @property
    def kept_model(self) -> torch.nn.Module:
        """The weights that are validated and kept as best/: the running average with --ema-decay."""
        return self.model if self.averaged is None else self.averaged.module

    def validate(self, model: torch.nn.Module) -> dict[str, Any] | None:
        """Validation metrics of ``model`` on rank 0 (``None`` without a validation split); other ranks wait. They
        score the network's own (query) boxes: the box refinement's calibration belongs to the network it was fitted
        to, and is fitted anew after training (``benchmarks/refinement_calibration.py``)."""
        result = None
        if self.dist.is_main and self.val_cases:
            query_boxes = replace(self.config, refinement=replace(self.config.refinement, enabled=False))
            metrics = evaluate_cases(model, self.val_cases, query_boxes, self.device)
            result = metrics.to_dict()
            dice = [value for value in (metrics.segmentation_dice or {}).values() if value is not None]
            result["Dice"] = sum(dice) / len(dice) if dice else None
        self.dist.barrier()
        return result

    def train(self) -> int:
        """Train until the schedule ends or a limit stops this invocation; returns the exit code."""
        train_config = self.config.train
        self.folder.path.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        stop_reason = None
        if self.state.epoch >= train_config.epochs:
            print(f"{self.folder.path}: the run already finished its {train_config.epochs} epochs", file=sys.stderr)
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
        # One loader for the whole run: its workers stay alive across epochs instead of starting anew each epoch (on a
        # GPU machine with 12 workers the first batch of an epoch took 3.5 s, start-up included); the epoch travels
        # in the keys.
        epoch_order = EpochOrder()
        # Samples made on the device are made here: worker processes cannot hand device tensors over.
        workers = 0 if self.options.data_on_device else train_config.num_workers
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=train_config.batch_size,
            sampler=epoch_order,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda" and not self.options.data_on_device,
            persistent_workers=workers > 0,
            # Its own generator: the loader draws a seed per epoch, which must not advance the global RNG (dropout)
            # for a resumed run to continue exactly.
            generator=torch.Generator().manual_seed(train_config.seed),
        )
        while self.state.epoch < train_config.epochs and stop_reason is None:
            epoch = self.state.epoch
            segment_started = time.monotonic()
            self.sampler.set_epoch(epoch)
            epoch_order.set(list(self.sampler)[self.state.step_in_epoch * train_config.batch_size :], epoch)
            bar = tqdm(
                loader,
                desc=f"epoch {epoch + 1}/{train_config.epochs}",
                unit="step",
                initial=self.state.step_in_epoch,
                total=self.steps_per_epoch,
                disable=not self.dist.is_main,
                **_progress_bar_options(),
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
        if self.log is not None:
            self.log.close()
            done = "finished" if stop_reason is None else f"stopped ({stop_reason}); continue with --resume"
            print(f"training {done}; checkpoints in {self.folder.path}", file=sys.stderr)
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
        metrics = self.validate(self.kept_model) if validate else None
        if metrics is not None:
            row.update({f"val_{k}": metrics[k] for k in VALIDATION_KEYS if metrics.get(k) is not None})
        raw = self.validate(self.model) if validate and self.averaged is not None else None
        if raw is not None:  # the weights as trained, too: the average's gain at the same step of the same run
            row.update({f"val_raw_{k}": raw[k] for k in VALIDATION_KEYS if raw.get(k) is not None})
        self.state.elapsed_s += seconds
        if complete:
            self.state.epoch += 1
            self.state.step_in_epoch = 0
            self.state.loss_sums = {}
        chosen = None if metrics is None else metrics[train_config.select_by]
        improved = chosen is not None and chosen > self.state.best_map
        if improved:
            self.state.best_map = chosen
        training_state = self._training_state()  # collective: every rank takes part
        if self.log is None:
            return
        self.folder.save("last", self.model, self.config, metrics, training_state)
        if improved:
            self.folder.save("best", self.kept_model, self.config, metrics)
        self.log.append(row)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float) and k != "lr")
        print(f"epoch {epoch + 1} step {self.state.global_step} lr {row['lr']:.2e}: {shown}", file=sys.stderr)
