"""Training batches of X-ray scenes: every rendered scene of a split held in memory, drawn with a random number of
views and photometric augmentation.

Scenes are small (10 views of 64^2 floats: 160 KB), so a split's scenes are read from the :class:`SceneCache` once
and kept. A batch draws its scenes, then ONE view count for the whole batch (the network stacks views) in
``[min_views, rendered views]`` and, per scene, which views to keep: one rendering teaches 2-view to 10-view use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..dataset import CaseRecord
from .scenes import PhotometricConfig, Scene, SceneCache, augment_views


def load_scenes(
    records: Sequence[CaseRecord],
    cache: SceneCache,
    scenes_per_case: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[Scene]:
    """Scenes ``0 .. scenes_per_case - 1`` of every case (rendered on first use, then read from the cache)."""
    scenes = []
    for number, record in enumerate(records):
        scenes.extend(cache.get(record, index) for index in range(scenes_per_case))
        if progress is not None:
            progress(number + 1, len(records))
    return scenes


@dataclass(eq=False)
class Batch:
    images: torch.Tensor  # [B, V, rows, columns]
    scenes: list[Scene]  # the kept views of each scene (cameras and 2D boxes match ``images``)
    isocenters: torch.Tensor  # [B, 3] world mm

    @property
    def cameras(self) -> list[list]:
        return [scene.cameras for scene in self.scenes]


def stack_scenes(scenes: Sequence[Scene], images: torch.Tensor | None = None) -> Batch:
    """A batch of scenes with the same number of views (``images`` overrides theirs, e.g. augmented)."""
    images = torch.stack([scene.images for scene in scenes]) if images is None else images
    isocenters = torch.as_tensor(np.stack([scene.isocenter for scene in scenes]), dtype=torch.float32)
    return Batch(images, list(scenes), isocenters)


def sample_batch(
    scenes: Sequence[Scene],
    batch_size: int,
    min_views: int,
    rng: np.random.Generator,
    photometric: PhotometricConfig,
    generator: torch.Generator,
) -> Batch:
    """``batch_size`` random scenes, each with the same random number of randomly chosen views, augmented."""
    chosen = [scenes[i] for i in rng.choice(len(scenes), size=batch_size, replace=len(scenes) < batch_size)]
    rendered = chosen[0].boxes2d.shape[0]
    count = int(rng.integers(min_views, rendered + 1))
    subsets = [scene.subset(sorted(rng.choice(rendered, size=count, replace=False).tolist())) for scene in chosen]
    images = torch.stack([augment_views(scene.images, photometric, generator) for scene in subsets])
    return stack_scenes(subsets, images)
