"""The mean-box prior: each organ's mean 3D box relative to the isocentre, the baseline that looks at no pixel.

The isocentre frame is what a set of views knows without any image content: origin at the C-arm's isocentre, axes
the world axes (the C-arm rotates about world ``+z``). The prior averages, over training scenes, each annotated
organ's box centre minus the scene's isocentre and its size; it predicts ``isocentre + mean offset`` with the mean
size. On shifted-isocentre scenes its centre error includes the unknown shift, which is the point of the shift.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .scenes import Scene


@dataclass(eq=False)
class MeanBoxPrior:
    class_names: tuple[str, ...]
    offsets: np.ndarray  # [organs, 3] mean box centre - isocentre, mm (NaN for organs never seen)
    sizes: np.ndarray  # [organs, 3] mean size, mm
    counts: np.ndarray  # [organs] number of boxes averaged

    @classmethod
    def fit(cls, class_names: Sequence[str], scenes: Iterable[Scene]) -> MeanBoxPrior:
        offsets: list[list[np.ndarray]] = [[] for _ in class_names]
        sizes: list[list[np.ndarray]] = [[] for _ in class_names]
        for scene in scenes:
            for k, box in enumerate(scene.boxes3d):
                if np.isfinite(box).all():
                    offsets[k].append(box[:3] - scene.isocenter)
                    sizes[k].append(box[3:])

        def mean(values: list[np.ndarray]) -> np.ndarray:
            return np.mean(values, axis=0) if values else np.full(3, np.nan)

        return cls(
            tuple(class_names),
            np.stack([mean(v) for v in offsets]),
            np.stack([mean(v) for v in sizes]),
            np.array([len(v) for v in offsets]),
        )

    def predict(self, isocenter: np.ndarray) -> np.ndarray:
        """Centre-size boxes ``[organs, 6]`` for a scene with this isocentre (NaN for organs never seen)."""
        return np.concatenate([np.asarray(isocenter) + self.offsets, self.sizes], axis=1)
