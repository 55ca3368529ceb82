"""Training an MV2D model on rendered scenes of a dataset.json's training cases, validated on its validation cases.

Run folder::

    last/          model.safetensors + xray_config.json (organdetr.xray.model_file) + training_state.pt
    best/          the model with the best validation 3D AP50 so far (+ validation.json)
    history.json   a row per logged step (mean losses) and per validation; training_curves.png plots them

``last/`` is written at every validation and when ``max_steps`` or the time limit stops the run, so a resumed run
continues with the same weights, optimiser, step, random streams and history. One step: a batch of scenes with 2 to
10 of their views, photometric augmentation, the set criterion (Dense Query Matching, or one-to-one with
``matcher.dense_lambda = 0``) on every decoder layer plus the 2D detector's losses, AdamW with warm-up then cosine
decay and gradient clipping.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic_file import atomic_path, atomic_write_text
from ..checkpoint import WEIGHTS_FILE, read_weights
from ..dataset import load_dataset_json
from ..errors import UserInputError
from ..optimizer import lr_factor
from ..run_folder import TRAINING_STATE_FILE, RunFolder
from .evaluation import evaluate_scenes
from .model_file import CONFIG_FILE, save_model
from .mv2d import MV2D, MV2DLoss
from .scenes import SceneCache
from .training_config import XrayTrainingConfig
from .training_data import load_scenes, sample_batch

LAST, BEST = "last", "best"
STATE_FILE = TRAINING_STATE_FILE
HISTORY_FILE = "history.json"
PLOT_FILE = "training_curves.png"
LOG_EVERY = 25  # steps per logged row of mean losses
MIN_LR_FACTOR = 0.05  # the cosine decay ends at this fraction of the learning rate


@dataclass(frozen=True)
class RunLimits:
    """When to stop before the schedule's end (``config.max_steps``); the run can be resumed."""

    max_steps: int | None = None
    time_limit_s: float | None = None


class XrayTrainer:
    """One training run (new or resumed) in ``output``."""

    def __init__(
        self,
        config: XrayTrainingConfig,
        data: Path,
        output: Path,
        cache_dir: Path | None,
        resume: bool = False,
        log: Callable[[str], None] = print,
    ) -> None:
        self.output, self.log = Path(output), log
        folder = RunFolder(self.output)  # the same last/ layout and start rules as the CT detector's runs
        folder.check_start(resume)
        last = folder.last
        if resume:
            config = XrayTrainingConfig.from_json_file(last / CONFIG_FILE)
        self.config = config
        description = load_dataset_json(data, ("training", "validation"))
        if description.class_names != config.class_names:
            raise UserInputError(f"{data}: classes {description.class_names} differ from the model's")
        cache = SceneCache(config.class_names, config.scenes, cache_dir)

        def progress(done: int, total: int) -> None:
            if done % 20 == 0 or done == total:
                log(f"scenes: {done}/{total} cases")

        self.train_scenes = load_scenes(description.splits["training"], cache, config.scenes_per_case, progress)
        self.val_scenes = load_scenes(description.splits["validation"], cache, 1)
        torch.manual_seed(config.seed)
        self.model = MV2D(config.model)
        self.loss = MV2DLoss(config.model, config.matcher, config.loss)
        self.optimiser = torch.optim.AdamW(
            self.model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.rng = np.random.default_rng(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step, self.elapsed_s, self.best_ap50 = 0, 0.0, -1.0
        self.history: list[dict] = []
        if resume:
            self._restore(last)

    def _restore(self, last: Path) -> None:
        weights, _ = read_weights(last / WEIGHTS_FILE)
        self.model.load_state_dict(weights)
        state = torch.load(last / STATE_FILE, weights_only=True)
        self.optimiser.load_state_dict(state["optimiser"])
        self.rng.bit_generator.state = json.loads(state["numpy_rng"])
        self.generator.set_state(state["torch_rng"])
        self.step, self.elapsed_s, self.best_ap50 = state["step"], state["elapsed_s"], state["best_ap50"]
        self.history = json.loads((self.output / HISTORY_FILE).read_text(encoding="utf-8"))
        self.log(f"resumed at step {self.step} ({self.elapsed_s / 60:.1f} min trained)")

    def train(self, limits: RunLimits = RunLimits()) -> str:
        """Train until the schedule ends or a limit stops it; returns why it stopped."""
        config = self.config
        self.output.mkdir(parents=True, exist_ok=True)
        self.model.train()
        run_started = started = time.monotonic()  # started: when elapsed_s was last brought up to date
        sums, counts = defaultdict(float), 0
        if self.step >= config.max_steps:
            self.log(f"the run already finished ({config.max_steps} steps); nothing to do")
            return "already finished"
        stop = "finished"
        while self.step < config.max_steps:
            if limits.max_steps is not None and self.step >= limits.max_steps:
                stop = f"stopped at --max-steps {limits.max_steps}; continue with --resume"
                break
            if limits.time_limit_s is not None and time.monotonic() - run_started >= limits.time_limit_s:
                stop = "stopped at the time limit; continue with --resume"
                break
            losses = self._step()
            for name, value in losses.items():
                if "_aux" not in name:
                    sums[name] += float(value.detach())
            counts += 1
            if self.step % LOG_EVERY == 0:
                minutes = (self.elapsed_s + time.monotonic() - started) / 60
                row = {"step": self.step, "minutes": round(minutes, 2), "lr": self.optimiser.param_groups[0]["lr"]}
                row.update({name: round(total / counts, 4) for name, total in sums.items()})
                self.history.append(row)
                self.log(" ".join(f"{key} {value}" for key, value in row.items()))
                sums, counts = defaultdict(float), 0
            if self.step % config.validate_every == 0 or self.step == config.max_steps:
                self.elapsed_s += time.monotonic() - started
                started = time.monotonic()
                self._validate_and_save()
        self.elapsed_s += time.monotonic() - started
        self._save_last()
        self.log(f"{stop} at step {self.step} after {self.elapsed_s / 60:.1f} min of training")
        return stop

    def _step(self) -> dict[str, torch.Tensor]:
        """One optimiser step on a fresh batch; returns its losses."""
        config = self.config
        for group in self.optimiser.param_groups:
            factor = lr_factor(self.step, config.warmup_steps, config.max_steps, final_fraction=MIN_LR_FACTOR)
            group["lr"] = config.learning_rate * factor
        batch = sample_batch(
            self.train_scenes, config.batch_size, config.min_views, self.rng, config.photometric, self.generator
        )
        losses = self.loss(self.model(batch.images, batch.cameras, batch.isocenters), batch.scenes)
        self.optimiser.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.gradient_clip)
        self.optimiser.step()
        self.step += 1
        return losses

    def _validate_and_save(self) -> None:
        figures = evaluate_scenes(self.model, self.val_scenes, self.config.class_names)
        mv2d, view = figures["mv2d"], figures["view_detector_2d"]
        row = {
            "step": self.step,
            "minutes": round(self.elapsed_s / 60, 2),
            "val_AP50": round(mv2d["AP50"], 4),
            "val_mAP": round(mv2d["mAP"], 4),
            "val_mean_IoU": round(mv2d["mean_IoU"], 4),
            "val_median_centre_error_mm": round(mv2d["median_centre_error_mm"], 2),
            "val_2d_AP50": round(view["AP50"], 4),
        }
        self.history.append(row)
        self.log(" ".join(f"{key} {value}" for key, value in row.items()))
        if mv2d["AP50"] > self.best_ap50:
            self.best_ap50 = mv2d["AP50"]
            save_model(self.output / BEST, self.model, self.config)
            atomic_write_text(
                self.output / BEST / "validation.json", json.dumps({"step": self.step, **figures}, indent=1)
            )
        self._save_last()

    def _save_last(self) -> None:
        last = save_model(self.output / LAST, self.model, self.config)
        state = {
            "optimiser": self.optimiser.state_dict(),
            "numpy_rng": json.dumps(self.rng.bit_generator.state),
            "torch_rng": self.generator.get_state(),
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "best_ap50": self.best_ap50,
        }
        with atomic_path(last / STATE_FILE, suffix=".pt") as temporary:
            torch.save(state, temporary)
        atomic_write_text(self.output / HISTORY_FILE, json.dumps(self.history, indent=1) + "\n")
        self._plot()

    def _plot(self) -> None:
        """Training losses and validation figures against the step (matplotlib, Agg)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
        for key in ("loss", "loss_class", "loss_bbox", "loss_giou", "loss_heatmap"):
            points = [(row["step"], row[key]) for row in self.history if key in row]
            if points:
                loss_ax.plot(*zip(*points, strict=True), label=key)
        loss_ax.set(xlabel="step", ylabel="loss", title="training losses", yscale="log")
        for key in ("val_AP50", "val_mAP", "val_mean_IoU", "val_2d_AP50"):
            points = [(row["step"], row[key]) for row in self.history if key in row]
            if points:
                val_ax.plot(*zip(*points, strict=True), marker=".", label=key[4:])
        val_ax.set(xlabel="step", ylabel="fraction", title="validation (10 views)", ylim=(0, 1))
        for ax in (loss_ax, val_ax):
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend()
        figure.tight_layout()
        with atomic_path(self.output / PLOT_FILE, suffix=".png") as temporary:
            figure.savefig(temporary, dpi=90)
        plt.close(figure)
