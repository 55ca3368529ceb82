"""Typed configuration of the Organ-DETR detector, its preprocessing and its training.

Everything that defines a trained model (network sizes, class names, preprocessing) lives in one
:class:`DetectorConfig` that is saved as JSON beside the weights of every checkpoint, so that the backend
reproduces exactly the preprocessing the network was trained with.

Conventions used throughout the package:

* Network array axes are the ITK index axes ``(i, j, k)`` of the volume after reorientation to
  :attr:`PreprocessConfig.orientation` (not numpy's ``(k, j, i)`` order of ``sitk.GetArrayFromImage``).
* Boxes are normalised ``(c0, c1, c2, s0, s1, s2)`` (centre and full size per array axis) in ``[0, 1]``,
  where 0 and 1 are the outer EDGES of the first and last voxel: voxel ``v`` spans ``[v / n, (v + 1) / n]``.
* Class indices are 0-based organ indices ``0..K-1`` (label value ``v`` is class ``v - 1``); index ``K`` is
  "no object" in the classification head. Segmentation heads use label values directly (channel 0 = background).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

# 2: physical-space preprocessing, presence, refinement, segmentation branch, quality head (1 still reads).
CONFIG_SCHEMA_VERSION = 2
# Top-level keys of older config.json files that no longer mean anything; reading drops them. "preset" named the
# preset a run started from, which the ``model`` section describes in full (and --config or --init-weights changes).
RETIRED_KEYS = ("preset",)


@dataclass
class BackboneConfig:
    """3D CNN feature extractor returning a pyramid of feature maps."""

    kind: Literal["fpn", "resnet"] = "fpn"
    in_channels: int = 1
    # Encoder widths; stage s (0-based) has stride 2**(s + 1) relative to the input.
    stage_channels: tuple[int, ...] = (8, 32, 64, 128)
    # Number of 3x3x3 conv-norm-act units per encoder stage (the first one has stride 2).
    convs_per_stage: tuple[int, ...] = (1, 1, 2, 2)
    fpn_channels: int = 32
    # Pyramid levels handed to the transformer, as encoder stage indices (finest first).
    out_stages: tuple[int, ...] = (1, 2, 3)
    resnet_depth: int = 18
    norm: Literal["instance", "batch", "group"] = "instance"


@dataclass
class MSAConfig:
    """MultiScale Attention encoder (paper section 3.1)."""

    enabled: bool = True
    patch_size: int = 2
    # Token width f_e of the MSA layers; None = the decoder's d_model. Outputs are always d_model channels.
    # Small defaults: the 32^3 level gives 4096 tokens, whose self-attention dominates a CPU training step.
    embed_dim: int | None = 32
    num_heads: int = 2
    depth: int = 1
    ffn_dim: int = 128
    dropout: float = 0.1
    bias: bool = False
    positional_encoding: bool = True


@dataclass
class DecoderConfig:
    """Deformable-DETR decoder with learned object queries."""

    d_model: int = 64
    num_heads: int = 4
    ffn_dim: int = 256
    dropout: float = 0.1
    num_layers: int = 3
    num_points: int = 4
    num_queries: int = 60
    num_encoder_layers: int = 0
    box_refine: bool = True


@dataclass
class SegmentationBranchConfig:
    """Full-resolution segmentation branch (Retina U-Net style): an upsampling decoder from the finest pyramid
    level to stride 2, with the stride-2 encoder stage as skip, and optionally a fine stage on the input grid with
    the image as skip (:mod:`organdetr.segmentation_branch`). Its organs refine the query boxes and make the
    segmentation preview."""

    enabled: bool = False
    # Channels of the decoder at stride 2 and of the fine stage (the input grid).
    channels: tuple[int, int] = (16, 8)
    # 2: logits at stride 2 only, upsampled (trilinear) where the input grid is needed. 1: also the fine stage's
    # input-grid logits, computed in the region where the stride-2 logits see an organ (a whole-window fine stage
    # makes a branch-only training step ~5x slower on CPU: 11.5 s vs 2.3 s, batch 2, 1 thread; the region: 4.3 s).
    output_stride: int = 2
    # The fine stage's region: stride-2 voxels where any organ's probability reaches this, grown by the margin.
    fine_region_threshold: float = 0.05
    fine_region_margin: int = 2


@dataclass
class ModelConfig:
    """The network: backbone -> MSA encoder -> deformable decoder -> heads."""

    num_classes: int = 7
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    msa: MSAConfig = field(default_factory=MSAConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    segmentation_heads: bool = True
    segmentation_branch: SegmentationBranchConfig = field(default_factory=SegmentationBranchConfig)
    # A head per query predicting the IoU of its box with the organ, so that scores rank boxes by quality.
    quality_head: bool = False
    # An image-level head: per organ, the probability that it is in the (window of the) scan.
    presence_head: bool = False
    # Pyramid levels the presence head pools (mean and max over space), coarsest first: the finer levels hold the
    # small structures (larynx, brainstem) whose presence at a scan's edge the coarsest level blurs.
    presence_levels: int = 1


@dataclass
class MatcherConfig:
    """Dense Query Matching: ``1 + eta`` positive queries per organ, ``eta = ceil(dense_lambda * N / M)``."""

    dense_lambda: float = 0.2
    max_eta: int = 5
    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0


@dataclass
class LossConfig:
    """Loss weights (paper: 2 / 5 / 2 / 2) and classification class weights (v1: background 1, organs 10)."""

    weight_class: float = 2.0
    weight_bbox: float = 5.0
    weight_giou: float = 2.0
    weight_seg: float = 2.0
    weight_seg_branch: float = 2.0
    weight_seg_fine: float = 2.0  # the segmentation branch's fine stage (output_stride 1)
    weight_quality: float = 1.0
    weight_presence: float = 2.0
    background_class_weight: float = 1.0
    organ_class_weight: float = 10.0
    aux_loss: bool = True
    # Per organ name: the weight of its voxels in the segmentation cross-entropy (background and the others: 1). A
    # thin, low-contrast organ (the oesophagus) otherwise loses every voxel to the background around it.
    seg_class_weights: dict[str, float] = field(default_factory=dict)


@dataclass
class PreprocessConfig:
    """Deterministic preprocessing shared by training and inference (see :mod:`organdetr.preprocess`).

    With ``target_spacing_mm`` (the physical-space contract) every volume is resampled to that spacing whatever its
    field of view, and ``spatial_size`` is the network WINDOW: larger volumes are covered by overlapping windows,
    smaller ones are padded with air. Without it (models before version 2) every volume is resized to
    ``spatial_size`` (the legacy fixed-shape contract, kept so that old checkpoints still run).
    """

    # DICOM-style orientation code of the network's index axes (SimpleITK DICOMOrient). "LPS" = identity.
    orientation: str = "LPS"
    spatial_size: tuple[int, int, int] = (128, 128, 128)
    intensity_min: float = -1000.0
    intensity_max: float = 1000.0
    # Further input channels, each a HU window scaled to [0, 1] (e.g. soft tissue (-160, 240), where the organs
    # sit in a few per cent of the main window); the backbone's in_channels is 1 + their number.
    extra_hu_windows: tuple[tuple[float, float], ...] = ()
    # Network voxel size (mm) along the reoriented axes; None = legacy resize to spatial_size.
    target_spacing_mm: tuple[float, float, float] | None = None
    # Fraction of the window shared by neighbouring windows along an axis.
    window_overlap: float = 0.25
    # Crop each scan to its body before windowing (physical-space contract only): the bounding box of the voxels at or
    # above this HU, grown by ``body_margin_mm``; None = no crop. The air around a body holds no organ, and a 500 mm
    # reconstruction circle around a 200 mm neck would cost four windows in-plane instead of one.
    body_hu_threshold: float | None = None
    body_margin_mm: float = 20.0
    # An axis at most this fraction longer than what one window fewer covers is resampled that much coarser instead
    # of getting a further window (keep it within the training zoom, AugmentConfig.zoom); 0 = never.
    window_fit_zoom: float = 0.0

    @property
    def crops_to_body(self) -> bool:
        """Whether scans are cropped to the body (only under the physical-space contract)."""
        return self.body_hu_threshold is not None and self.target_spacing_mm is not None


# New physical-space runs from a preset crop scans to the body and fit axes to whole windows, as the shipped model
# does since 2.3.1. The dataclass defaults stay "off", so that configs written before (no such keys) keep behaving
# as they were trained.
NEW_RUN_BODY_HU_THRESHOLD = -500.0
NEW_RUN_WINDOW_FIT_ZOOM = 0.05


@dataclass
class PresenceConfig:
    """When an organ counts as present in a scan: its presence probability (the presence head's, else the best
    query's class probability; the highest over windows) is at or above ``threshold``."""

    threshold: float = 0.5
    # Per organ name, with a segmentation branch: the organ's voxels in the segmentation vouch for it too, its
    # probability scaled by min(1, its voxels / this), so an organ the voxels do not show is absent whatever the
    # image-level head says (that head pattern-completes: a mandible below the jaw). Organs not listed (e.g. one the
    # branch does not segment) rely on the head alone. Voxels: in the branch's segmentation stitched on its own grid,
    # each branch voxel counted as the network-grid voxels it covers.
    min_segmented_voxels: dict[str, int] = field(default_factory=dict)


@dataclass
class BoxRefinementConfig:
    """Query boxes refined by the segmentation branch's components (:mod:`organdetr.box_refinement`)."""

    enabled: bool = True  # only acts on models with a segmentation branch
    min_iou: float = 0.1  # overlap of query box and component box needed to trust the component
    min_voxels: int = 5  # smaller components are noise
    # What a trusted component does to the query box: "replace" it, "average" the two corner-wise (two estimates
    # with independent errors), "weighted": each corner a calibrated mix of the two (``component_weights``) minus a
    # calibrated bias (``corner_bias_voxels``), or "keep" it (the component then only informs the score).
    box_rule: Literal["replace", "average", "weighted", "keep"] = "replace"
    # Per organ, for "weighted": the component's share of each corner (lo0, lo1, lo2, hi0, hi1, hi2 along the
    # network axes), the query's share being the rest; organs not listed keep their query box.
    component_weights: dict[str, tuple[float, ...]] = field(default_factory=dict)
    # Per organ, for "weighted": the mean error of the mixed corners on the calibration cases (network voxels),
    # subtracted. Both from ``benchmarks/refinement_calibration.py`` on training cases.
    corner_bias_voxels: dict[str, tuple[float, ...]] = field(default_factory=dict)
    # Scale each organ's score by the IoU of its query box and the best component's box (0 when none): where the
    # voxels and the query agree the box is precise, so the score ranks boxes by quality.
    score_by_agreement: bool = False


@dataclass
class FieldOfViewConfig:
    """Random field-of-view cuts in training, so that the model learns that organs can be absent.

    An annotated organ that a cut removes is a TRUE negative (trained as absent); one whose visible part is below
    ``min_visible_fraction`` of its voxels is ambiguous and treated as unannotated for that sample; unannotated
    organs stay unknown. Axis 2 of the network grid is the head-foot axis (orientation ``LPS``).
    """

    cut_probability: float = 0.5  # cut along the head-foot axis
    min_cut_fraction: float = 0.15  # shortest slab kept, as a fraction of the case's head-foot extent
    inplane_cut_probability: float = 0.15  # also cut each in-plane axis
    min_inplane_fraction: float = 0.5
    empty_probability: float = 0.1  # a slab that holds no annotated organ (where the case has one)
    # Share of head-foot cuts that end at an annotated organ's top or bottom slice (+- landmark_margin_voxels), as
    # scans end at anatomical landmarks: there the organ is just in or just out, the hardest presence decision.
    landmark_cut_fraction: float = 0.5
    landmark_margin_voxels: int = 4
    min_visible_fraction: float = 0.2


@dataclass
class AugmentConfig:
    """Random augmentation of a training window (MONAI), after its field of view is cut.

    No flips: the organ classes are lateral (left / right parotid). Rotation mostly about the head-foot axis (axis 2):
    patients lie on the table, and out-of-plane tilts widen the boxes of thin long organs such as the spinal cord.
    The affine resampling of a window is the costly part on CPU, so it is applied with ``affine_probability``.
    """

    affine_probability: float = 0.7
    rotate_degrees: tuple[float, float, float] = (3.0, 3.0, 7.5)  # about network axes 0, 1, 2
    zoom: float = 0.1  # scale factor drawn from [1 - zoom, 1 + zoom]
    translate_fraction: float = 0.1
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    intensity_probability: float = 0.5
    noise_std: float = 0.02
    noise_probability: float = 0.2
    smooth_sigma: tuple[float, float] = (0.5, 1.0)
    smooth_probability: float = 0.1


@dataclass
class TrainConfig:
    """Optimisation settings for ``organdetr train``."""

    epochs: int = 100
    batch_size: int = 2
    lr: float = 2e-4
    lr_backbone: float = 2e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    grad_clip: float = 1.0
    amp: bool = True
    seed: int = 0
    num_workers: int = 0
    val_every: int = 1
    augment: bool = True
    # > 0: cases of rarely annotated organs are drawn more often (organdetr.sampling); 0 = uniform.
    oversample_rare_organs: float = 0.0
    # Parameter-name prefixes that train; empty = all (e.g. ("presence_head",) to fit a new head on a trained net).
    train_only: tuple[str, ...] = ()
    # The validation figure that picks best/: the query boxes' mAP, or the segmentation branch's mean Dice over the
    # organs (for runs that train only the branch, whose query boxes do not change).
    select_by: Literal["mAP", "Dice"] = "mAP"
    # > 0: validate and keep as best/ the exponential moving average of the weights (organdetr.weight_averaging)
    # with this decay per step; 0 = the weights as trained.
    ema_decay: float = 0.0
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)
    field_of_view: FieldOfViewConfig = field(default_factory=FieldOfViewConfig)


@dataclass
class DetectorConfig:
    """Everything needed to rebuild and run a trained detector; stored as ``config.json`` in a checkpoint."""

    name: str = "organdetr"
    version: str = "0.0.0"
    class_names: tuple[str, ...] = (
        "Brainstem",
        "SpinalCord",
        "RightParotid",
        "LeftParotid",
        "Esophagus",
        "Larynx",
        "Mandible",
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    presence: PresenceConfig = field(default_factory=PresenceConfig)
    refinement: BoxRefinementConfig = field(default_factory=BoxRefinementConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    training_data: dict[str, Any] = field(default_factory=dict)
    schema_version: int = CONFIG_SCHEMA_VERSION

    def __post_init__(self) -> None:
        if len(self.class_names) != self.model.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for a model with {self.model.num_classes} classes")
        channels = 1 + len(self.preprocess.extra_hu_windows)
        if channels != self.model.backbone.in_channels:
            raise ValueError(
                f"preprocessing makes {channels} input channels, the backbone takes {self.model.backbone.in_channels}"
            )
        if not 1 <= self.model.presence_levels <= len(self.model.backbone.out_stages):
            raise ValueError(
                f"presence_levels {self.model.presence_levels} must be 1..{len(self.model.backbone.out_stages)} "
                "(the pyramid levels)"
            )
        for what, organs in (
            ("presence.min_segmented_voxels", self.presence.min_segmented_voxels),
            ("loss.seg_class_weights", self.loss.seg_class_weights),
            ("refinement.component_weights", self.refinement.component_weights),
            ("refinement.corner_bias_voxels", self.refinement.corner_bias_voxels),
        ):
            unknown = set(organs) - set(self.class_names)
            if unknown:
                raise ValueError(f"{what} names organs the model does not have: {sorted(unknown)}")
        if not 0.0 <= self.preprocess.window_fit_zoom < 0.25 or not self.preprocess.body_margin_mm >= 0.0:
            raise ValueError("preprocess.window_fit_zoom must be in [0, 0.25) and body_margin_mm >= 0")
        corners = [*self.refinement.component_weights.values(), *self.refinement.corner_bias_voxels.values()]
        if any(len(values) != 6 for values in corners) or not all(
            0.0 <= w <= 1.0 for values in self.refinement.component_weights.values() for w in values
        ):
            raise ValueError("refinement component_weights (in [0, 1]) and corner_bias_voxels take 6 values per organ")
        if any(not weight > 0 for weight in self.loss.seg_class_weights.values()):
            raise ValueError(f"loss.seg_class_weights must be positive, got {self.loss.seg_class_weights}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorConfig:
        version = data.get("schema_version", CONFIG_SCHEMA_VERSION) if isinstance(data, dict) else None
        if not isinstance(version, int) or version > CONFIG_SCHEMA_VERSION:
            raise ValueError(
                f"config schema_version {version!r} is newer than this organdetr reads ({CONFIG_SCHEMA_VERSION}); "
                "update organdetr"
            )
        current = {key: value for key, value in data.items() if key not in RETIRED_KEYS}
        return _from_dict(cls, {**current, "schema_version": CONFIG_SCHEMA_VERSION})

    @classmethod
    def from_json_file(cls, path: str | Path) -> DetectorConfig:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _tuples(value: Any) -> Any:
    """JSON lists (also nested ones) -> tuples, as the dataclasses declare them."""
    return tuple(_tuples(item) for item in value) if isinstance(value, list) else value


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) dataclass from plain JSON data; unknown keys and values outside a ``Literal`` are an
    error, missing keys take defaults.

    Nested configs are found from the type hints, so a new config class needs no registration here.
    """
    if not isinstance(data, dict):
        raise ValueError(f"expected an object for {cls.__name__}, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if typing.get_origin(hints[name]) is Literal and value not in typing.get_args(hints[name]):
            raise ValueError(
                f"{cls.__name__}.{name} must be one of {list(typing.get_args(hints[name]))}, got {value!r}"
            )
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _from_dict(hints[name], value)
        elif isinstance(value, list):
            kwargs[name] = _tuples(value)
        elif isinstance(value, dict):
            kwargs[name] = {key: _tuples(item) for key, item in value.items()}
        else:
            kwargs[name] = value
    return cls(**kwargs)


def small_model_config(num_classes: int) -> ModelConfig:
    """Sized to train on a 2-core CPU at 128^3 input: levels at strides 4/8/16 (32^3, 16^3, 8^3), d_model 64."""
    return ModelConfig(num_classes=num_classes)


def paper_model_config(num_classes: int) -> ModelConfig:
    """Sizes of the paper / v1 snapshot: FPN and d_model 384, 3 levels, patch 2, depth 2, 100 queries.

    Levels at strides 4/8/16 so that the paper's 224x224x96 input (multiple of 32) patchifies exactly.
    """
    return ModelConfig(
        num_classes=num_classes,
        backbone=BackboneConfig(
            stage_channels=(32, 64, 128, 256, 320),
            convs_per_stage=(2, 2, 2, 2, 2),
            fpn_channels=384,
            out_stages=(1, 2, 3),
        ),
        msa=MSAConfig(patch_size=2, embed_dim=384, num_heads=64, depth=2, ffn_dim=1024, dropout=0.3, bias=False),
        decoder=DecoderConfig(
            d_model=384, num_heads=6, ffn_dim=1024, dropout=0.1, num_layers=3, num_points=4, num_queries=100
        ),
    )


PRESETS = {"small": small_model_config, "paper": paper_model_config}


def preset_config(preset: str, class_names: tuple[str, ...] | None = None, **overrides: Any) -> DetectorConfig:
    """A :class:`DetectorConfig` for a named preset (``small`` or ``paper``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    names = tuple(class_names) if class_names is not None else DetectorConfig.class_names
    return DetectorConfig(class_names=names, model=PRESETS[preset](len(names)), **overrides)
