"""The epoch log of a training run: one row per epoch (or part of one before a stop) in the run folder.

``history.json`` holds the rows (``--resume`` appends to it), ``metrics.csv`` is the same as CSV,
``training_curves.png`` plots loss and validation metrics against the optimiser step, and ``tensorboard/`` gets every
float of a row when TensorBoard is installed.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from .atomic_file import atomic_path, atomic_write_text

HISTORY_FILE = "history.json"
CSV_FILE = "metrics.csv"
PLOT_FILE = "training_curves.png"
# Validation metrics logged per row (``val_<key>``) and plotted.
VALIDATION_KEYS = ("mAP", "AP50", "AP75", "mAR", "mAP_nndet", "Dice")  # Dice: with a segmentation branch


class TrainingLog:
    """The rows so far and the files made from them (written by rank 0 only)."""

    def __init__(self, folder: Path, resume: bool):
        self.folder = folder
        history_file = folder / HISTORY_FILE
        self.rows: list[dict[str, Any]] = (
            json.loads(history_file.read_text(encoding="utf-8")) if resume and history_file.is_file() else []
        )
        self.tensorboard = _open_tensorboard(folder)

    def append(self, row: dict[str, Any]) -> None:
        """Add a row and rewrite history.json and metrics.csv (each atomically)."""
        self.rows.append(row)
        atomic_write_text(self.folder / HISTORY_FILE, json.dumps(self.rows, indent=1))
        columns: list[str] = []
        for entry in self.rows:
            columns.extend(k for k in entry if k not in columns)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.folder / CSV_FILE, buffer.getvalue())
        if self.tensorboard is not None:
            for key, value in row.items():
                if isinstance(value, float):
                    self.tensorboard.add_scalar(key.replace("_", "/", 1), value, row["step"])
            self.tensorboard.flush()

    def close(self) -> None:
        """Plot the curves; close TensorBoard."""
        plot_curves(self.rows, self.folder / PLOT_FILE)
        if self.tensorboard is not None:
            self.tensorboard.close()


def _open_tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder / "tensorboard"))


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Training loss and validation metrics against the optimiser step (matplotlib, Agg); nothing without rows."""
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = defaultdict(list)
    for row in rows:
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
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=90)
    plt.close(figure)
