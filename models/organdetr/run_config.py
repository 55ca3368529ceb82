"""The DetectorConfig of a training run: from a preset, a config file or the ``--init-weights`` model, with the
command line's choices on top; on ``--resume``, the run's own.

Imports nothing heavy, so that ``organdetr train --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import (
    NEW_RUN_BODY_HU_THRESHOLD,
    NEW_RUN_WINDOW_FIT_ZOOM,
    DetectorConfig,
    PreprocessConfig,
    SegmentationBranchConfig,
    preset_config,
)
from .errors import UserInputError

if TYPE_CHECKING:
    from .checkpoint import LoadedDetector
    from .dataset import DatasetDescription

# Soft-tissue window (HU) of --soft-tissue-channel: the organs sit in 5-10 % of the main [-1000, 1000] window.
SOFT_TISSUE_HU = (-160.0, 240.0)


def with_soft_tissue_window(preprocess: PreprocessConfig) -> PreprocessConfig:
    """``preprocess`` with the soft-tissue HU window as one more input channel (``--soft-tissue-channel``), unchanged
    when it has that channel already."""
    if SOFT_TISSUE_HU in preprocess.extra_hu_windows:
        return preprocess
    return replace(preprocess, extra_hu_windows=(*preprocess.extra_hu_windows, SOFT_TISSUE_HU))


@dataclass
class ConfigChoices:
    """What the command line says about a new run's config (``None`` / ``False``: keep the starting config's).

    Field names are the ``organdetr train`` options' (see its ``--help``).
    """

    preset: str = "small"
    config: Path | None = None  # a DetectorConfig JSON to start from instead of the preset
    spatial_size: Sequence[int] | None = None
    target_spacing: Sequence[str] | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    lr_backbone: float | None = None
    warmup_steps: int | None = None
    dense_lambda: float | None = None
    no_msa: bool = False
    segmentation_branch: bool = False
    segmentation_stride: int | None = None
    fine_channels: int | None = None
    quality_head: bool = False
    presence_head: bool = False
    presence_levels: int | None = None
    train_only: Sequence[str] | None = None
    select_by: str | None = None
    ema_decay: float | None = None
    oversample_rare_organs: float | None = None
    seg_class_weight: Sequence[str] | None = None  # ORGAN=WEIGHT items
    soft_tissue_channel: bool = False
    no_augment: bool = False
    seed: int | None = None
    workers: int | None = None
    val_every: int | None = None


def new_run_config(
    choices: ConfigChoices, name: str, description: DatasetDescription, initial: LoadedDetector | None = None
) -> DetectorConfig:
    """A new run's config: the preset, ``choices.config`` or ``initial``'s, with the choices applied."""
    if initial is not None:
        if choices.config is not None or choices.spatial_size is not None or choices.no_msa:
            raise UserInputError("--init-weights fixes the network: drop --config, --spatial-size and --no-msa")
        config = initial.config
        description.check_class_names(config.class_names)
    elif choices.config is not None:
        try:
            config = DetectorConfig.from_json_file(choices.config)
        except (OSError, ValueError, TypeError) as error:
            raise UserInputError(f"invalid --config {choices.config}: {error}") from None
        description.check_class_names(config.class_names)
    else:
        config = preset_config(choices.preset, description.class_names)
    overrides = {
        "epochs": choices.epochs,
        "batch_size": choices.batch_size,
        "lr": choices.lr,
        "lr_backbone": choices.lr_backbone if choices.lr_backbone is not None else choices.lr,
        "warmup_steps": choices.warmup_steps,
        "seed": choices.seed,
        "num_workers": choices.workers,
        "val_every": choices.val_every,
        "oversample_rare_organs": choices.oversample_rare_organs,
        "train_only": tuple(choices.train_only or ()),  # a choice of this run, never inherited from --init-weights
        "select_by": choices.select_by or "mAP",  # likewise
        "ema_decay": choices.ema_decay or 0.0,  # likewise
    }
    train = replace(config.train, **{k: v for k, v in overrides.items() if v is not None})
    if choices.no_augment:
        train = replace(train, augment=False)
    for field_name in ("epochs", "batch_size", "val_every"):
        if getattr(train, field_name) < 1:
            raise UserInputError(f"--{field_name.replace('_', '-')} must be at least 1")
    if train.lr <= 0 or train.lr_backbone <= 0:
        raise UserInputError("--lr and --lr-backbone must be positive")
    if not 0.0 <= train.ema_decay < 1.0:
        raise UserInputError("--ema-decay must be in [0, 1)")
    if not 0.0 <= train.oversample_rare_organs <= 2.0:
        raise UserInputError("--oversample-rare-organs must be between 0 and 2")
    loss = config.loss
    if choices.seg_class_weight is not None:
        loss = replace(loss, seg_class_weights=_organ_weights(choices.seg_class_weight, config.class_names))
    matcher = config.matcher
    if choices.dense_lambda is not None:
        if not 0.0 <= choices.dense_lambda < 1.0:
            raise UserInputError("--dense-lambda must be in [0, 1)")
        matcher = replace(matcher, dense_lambda=choices.dense_lambda)
    preprocess = config.preprocess
    if choices.spatial_size is not None:
        preprocess = replace(preprocess, spatial_size=tuple(choices.spatial_size))
    target_spacing = choices.target_spacing
    from_preset = initial is None and choices.config is None
    if target_spacing is None and from_preset:
        target_spacing = ["auto"]
    if target_spacing is not None:
        preprocess = replace(preprocess, target_spacing_mm=_target_spacing(target_spacing, description, preprocess))
    if from_preset and preprocess.target_spacing_mm is not None:
        preprocess = replace(
            preprocess, body_hu_threshold=NEW_RUN_BODY_HU_THRESHOLD, window_fit_zoom=NEW_RUN_WINDOW_FIT_ZOOM
        )
    model = config.model
    if choices.no_msa:
        model = replace(model, msa=replace(model.msa, enabled=False))
    if choices.segmentation_branch or choices.segmentation_stride is not None:
        branch = replace(model.segmentation_branch, enabled=True)
        if choices.segmentation_stride is not None:
            branch = replace(branch, output_stride=choices.segmentation_stride)
        model = replace(model, segmentation_branch=branch)
    if choices.fine_channels is not None:
        trained = initial is not None and _has_fine_stage(initial.config.model.segmentation_branch)
        branch = _fine_stage_channels(model.segmentation_branch, choices.fine_channels, trained)
        model = replace(model, segmentation_branch=branch)
    if choices.quality_head:
        model = replace(model, quality_head=True)
    if choices.presence_head or choices.presence_levels is not None:
        model = replace(model, presence_head=True, presence_levels=choices.presence_levels or model.presence_levels)
    if choices.soft_tissue_channel:
        widened = with_soft_tissue_window(preprocess)
        if widened != preprocess:  # a new input channel, unless the starting model has it already
            model = replace(model, backbone=replace(model.backbone, in_channels=model.backbone.in_channels + 1))
        preprocess = widened
    if train.select_by == "Dice" and not model.segmentation_branch.enabled:
        raise UserInputError("--select-by Dice needs a segmentation branch (--segmentation-branch)")
    return replace(
        config,
        name=name,
        train=train,
        loss=loss,
        matcher=matcher,
        model=model,
        preprocess=preprocess,
        training_data=description.summary() | initialised_from(initial),
    )


def _has_fine_stage(branch: SegmentationBranchConfig) -> bool:
    return branch.enabled and branch.output_stride == 1


def _fine_stage_channels(branch: SegmentationBranchConfig, channels: int, trained: bool) -> SegmentationBranchConfig:
    """``--fine-channels``: the fine stage with ``channels`` channels. A ``trained`` one may only grow, so that the run
    starts out computing what the given model did (:mod:`organdetr.fine_tuning`)."""
    if not _has_fine_stage(branch):
        raise UserInputError("--fine-channels needs the segmentation branch's fine stage (--segmentation-stride 1)")
    half, full = branch.channels
    if channels < 1:
        raise UserInputError("--fine-channels must be at least 1")
    if trained and channels < full:
        raise UserInputError(f"--fine-channels may only widen a trained fine stage: it has {full}, got {channels}")
    return replace(branch, channels=(half, channels))


def resumed_config(last: Path, workers: int | None) -> DetectorConfig:
    """On --resume everything comes from the checkpoint; only --workers may change (it does not alter results)."""
    config = DetectorConfig.from_json_file(last / "config.json")
    if workers is not None:
        config = replace(config, train=replace(config.train, num_workers=workers))
    return config


def _target_spacing(
    values: Sequence[str], description: DatasetDescription, preprocess: PreprocessConfig
) -> tuple[float, float, float] | None:
    """``--target-spacing`` -> the stored value (see its help)."""
    if list(values) == ["auto"]:
        return description.median_spacing(preprocess.orientation)
    if list(values) == ["none"]:
        return None
    try:
        spacing = tuple(float(v) for v in values)
    except ValueError:
        spacing = ()
    if len(spacing) != 3 or not all(0.1 <= v <= 20.0 for v in spacing):
        raise UserInputError("--target-spacing takes 3 values in mm between 0.1 and 20, 'auto' or 'none'")
    return spacing  # type: ignore[return-value]


def _organ_weights(items: Sequence[str], class_names: Sequence[str]) -> dict[str, float]:
    """``--seg-class-weight`` ``ORGAN=WEIGHT`` items -> ``{organ: weight}``."""
    weights = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = 0.0
        if name not in class_names or not 0 < weight <= 1000:
            raise UserInputError(
                f"--seg-class-weight {item!r}: expected ORGAN=WEIGHT with an organ of {list(class_names)} and a "
                "weight in (0, 1000]"
            )
        weights[name] = weight
    return weights


def initialised_from(initial: LoadedDetector | None) -> dict[str, Any]:
    """Provenance of fine-tuned weights, recorded in the run's ``training_data``."""
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
