"""What an MV2D training run is: scenes, network, matching, losses and optimisation in one typed config, and presets.

The config is saved as ``xray_config.json`` beside the weights (:mod:`organdetr.xray.model_file`), so a trained model
says which detector geometry it was trained for (``scenes.c_arm``) and how. Presets:

* ``small``: the shipped model's run; 64^2-pixel views (10 mm detector pixels, ~6 mm at the isocentre), 10 views
  per rendered scene of which each batch keeps 2 to 10, isocentres shifted by up to 30 mm per axis.
* ``test``: a tiny network and 32^2 views, for tests and smoke runs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import LossConfig, MatcherConfig, _from_dict
from ..errors import UserInputError
from .camera import CArmGeometry
from .mv2d import MV2DConfig
from .scenes import PhotometricConfig, SceneConfig
from .view_detector import CenterNetConfig

OPENKBP_CLASSES = ("Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible")


@dataclass(frozen=True)
class XrayTrainingConfig:
    class_names: tuple[str, ...] = OPENKBP_CLASSES
    scenes: SceneConfig = field(
        default_factory=lambda: SceneConfig(
            c_arm=CArmGeometry(num_views=10, rows=64, columns=64, pixel_spacing_mm=10.0)
        )
    )
    scenes_per_case: int = 4  # rendered scenes (acquisitions) per training case
    min_views: int = 2  # each batch keeps a random number of views in [min_views, scenes.c_arm.num_views]
    model: MV2DConfig = field(default_factory=MV2DConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)  # dense_lambda 0: one-to-one Hungarian matching
    loss: LossConfig = field(default_factory=LossConfig)
    photometric: PhotometricConfig = field(default_factory=PhotometricConfig)
    batch_size: int = 4
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    max_steps: int = 6000  # the cosine schedule's length; --time-limit-minutes may stop a run earlier
    gradient_clip: float = 1.0
    validate_every: int = 500  # steps between validations (and best-model checks); also at the end
    presence_threshold: float = 0.05  # detect: organs whose best query scores lower are reported absent
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model.num_classes != len(self.class_names):
            raise UserInputError(f"model.num_classes {self.model.num_classes} != {len(self.class_names)} classes")
        if not 1 <= self.min_views <= self.scenes.c_arm.num_views:
            raise UserInputError("min_views must be between 1 and the number of rendered views")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def from_json_file(cls, path: str | Path) -> XrayTrainingConfig:
        try:
            return _from_dict(cls, json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as error:
            raise UserInputError(f"invalid {path}: {error}") from None


def _test_preset() -> XrayTrainingConfig:
    base = XrayTrainingConfig()
    c_arm = replace(base.scenes.c_arm, num_views=4, rows=32, columns=32, pixel_spacing_mm=20.0)
    detector = CenterNetConfig(stage_channels=(8, 16), feature_channels=16)
    return replace(
        base,
        scenes=replace(base.scenes, c_arm=c_arm),
        scenes_per_case=2,
        model=replace(base.model, detector=detector, d_model=16, ffn_dim=32, num_layers=1, num_heads=2),
        batch_size=2,
        warmup_steps=2,
        max_steps=20,
        validate_every=10,
    )


PRESETS = {"small": XrayTrainingConfig, "test": _test_preset}


def preset(name: str, **overrides: Any) -> XrayTrainingConfig:
    if name not in PRESETS:
        raise UserInputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name](), **overrides)
