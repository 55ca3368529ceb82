"""Where and how long one ``organdetr train`` invocation trains (the run's DetectorConfig says what it trains).

Imports nothing heavy, so that ``organdetr train --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import UserInputError


@dataclass
class RunOptions:
    """Where and how long this invocation trains (the config says what); field names are ``organdetr train``'s
    options (see its ``--help``)."""

    data: Path  # MSD-style dataset.json
    output: Path  # the run folder
    resume: bool = False
    init_weights: str | None = None  # model folder to fine-tune ("default": the shipped model)
    device: str = "auto"
    data_on_device: bool = False  # training cases held, cut and augmented on the device (no loader workers)
    cache_dir: Path | None = None  # preprocessed volumes on disk
    max_steps: int | None = None  # stop after this many optimiser steps in total (the schedule spans all epochs)
    time_limit_minutes: float | None = None  # stop after this much training time in this invocation

    def __post_init__(self) -> None:
        if self.max_steps is not None and self.max_steps < 1:
            raise UserInputError("--max-steps must be at least 1")
        if self.time_limit_minutes is not None and self.time_limit_minutes <= 0:
            raise UserInputError("--time-limit-minutes must be positive")
        if self.resume and self.init_weights is not None:
            raise UserInputError("--init-weights starts a new run; it cannot be combined with --resume")
