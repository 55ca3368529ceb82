"""Training and evaluation scenes: a CT case seen by a randomly placed C-arm, with its 2D and 3D organ boxes.

A scene is one case of a ``dataset.json`` (:mod:`organdetr.dataset`) under one C-arm acquisition: the isocentre is the
scan's centre shifted by up to ``isocenter_shift_mm`` per axis (the CTs are centred; without the shift a model could
learn fixed positions), the start angle is random and the source-to-isocentre and source-to-detector distances are
jittered. It holds the rendered views (line integrals, :mod:`organdetr.xray.render`), every annotated organ's
clipped silhouette box per view and its 3D box (world LPS axes, mm; :mod:`organdetr.xray.silhouettes`).

Scenes are deterministic in (settings, case, scene index) and cached on disk by :class:`SceneCache`, keyed by the
settings and the CT and label files' paths, sizes and modification times. Photometric augmentation
(:func:`augment_views`) is random per use and applied after the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ..atomic_file import atomic_path
from ..dataset import CaseRecord, _read_image
from ..errors import UserInputError
from ..image_geometry import index_to_physical_matrix
from .camera import Camera, CArmGeometry
from .render import AttenuationVolume, RenderConfig, render_views
from .silhouettes import silhouette_boxes, surface_corners, world_box

# Bump when a cached scene's content changes, so stale files are rebuilt instead of misread.
_CACHE_VERSION = 1


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn. ``c_arm`` gives the views, arc and detector; its isocentre and start angle are replaced
    per scene."""

    c_arm: CArmGeometry = field(default_factory=CArmGeometry)
    isocenter_shift_mm: float = 30.0  # uniform in [-shift, shift] per world axis around the scan's centre
    random_start_angle: bool = True
    distance_jitter: float = 0.05  # source-to-isocentre and source-to-detector scaled by U(1 - j, 1 + j)
    render: bool = True  # False: geometry and boxes only (carving and priors need no pixels)
    render_config: RenderConfig = field(default_factory=RenderConfig)
    seed: int = 0


@dataclass(eq=False)
class Scene:
    """One case under one acquisition. Boxes are NaN where an organ is not annotated, absent or not seen."""

    case: str
    geometry: CArmGeometry
    images: torch.Tensor | None  # [views, rows, columns] line integrals, float32
    boxes2d: np.ndarray  # [views, organs, 4] clipped silhouette boxes (u_min, v_min, u_max, v_max), pixels
    boxes3d: np.ndarray  # [organs, 6] centre-size, world LPS axes, mm
    annotated: np.ndarray  # [organs] bool
    views: tuple[int, ...] | None = None  # which of the C-arm's views the scene keeps (None: all)

    @property
    def cameras(self) -> list[Camera]:
        cameras = self.geometry.cameras()
        return cameras if self.views is None else [cameras[i] for i in self.views]

    def subset(self, views: Sequence[int]) -> Scene:
        """The same scene seen by some of its views only (training on 2 to 10 views of one rendering)."""
        keep = list(views)
        chosen = tuple(keep) if self.views is None else tuple(self.views[i] for i in keep)
        images = None if self.images is None else self.images[keep]
        return replace(self, images=images, boxes2d=self.boxes2d[keep], views=chosen)

    @property
    def isocenter(self) -> np.ndarray:
        return np.asarray(self.geometry.isocenter, dtype=np.float64)


def scan_centre(image: sitk.Image) -> np.ndarray:
    """World position of the centre of a volume's voxel grid."""
    centre_index = (np.asarray(image.GetSize(), dtype=np.float64) - 1.0) / 2.0
    return (index_to_physical_matrix(image) @ np.append(centre_index, 1.0))[:3]


def scene_geometry(config: SceneConfig, centre: np.ndarray, rng: np.random.Generator) -> CArmGeometry:
    """The jittered C-arm of one scene around a scan centre."""
    base = config.c_arm
    shift = rng.uniform(-config.isocenter_shift_mm, config.isocenter_shift_mm, size=3)
    start = float(rng.uniform(0.0, 360.0)) if config.random_start_angle else base.start_angle_deg
    source_scale, detector_scale = rng.uniform(1.0 - config.distance_jitter, 1.0 + config.distance_jitter, size=2)
    source_to_isocenter = base.source_to_isocenter_mm * source_scale
    # Keep the detector behind the isocentre whatever the draw.
    source_to_detector = max(base.source_to_detector_mm * detector_scale, 1.05 * source_to_isocenter)
    return replace(
        base,
        isocenter=tuple(float(v) for v in centre + shift),
        start_angle_deg=start,
        source_to_isocenter_mm=float(source_to_isocenter),
        source_to_detector_mm=float(source_to_detector),
    )


def _scene_rng(config: SceneConfig, case: str, index: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, zlib.crc32(case.encode()), index])


def organ_corners(label: sitk.Image, num_classes: int) -> list[np.ndarray]:
    """Surface voxel corners (world mm) of each organ ``1..num_classes`` of a label map (empty arrays if absent)."""
    values = sitk.GetArrayViewFromImage(label)
    affine = index_to_physical_matrix(label)
    return [surface_corners(values == k, affine) for k in range(1, num_classes + 1)]


@dataclass(eq=False)
class CaseData:
    """What every scene of a case shares: the CT and each organ's surface corners (read and computed once)."""

    name: str
    ct: sitk.Image
    corners: list[np.ndarray]  # per organ, world mm (empty where the organ is not in the label map)
    annotated: np.ndarray  # [organs] bool


def read_case(record: CaseRecord, class_names: Sequence[str]) -> CaseData:
    image = _read_image(record.image, "image")
    label = _read_image(record.label, "label map")
    if image.GetSize() != label.GetSize():
        raise UserInputError(f"{record.name}: image size {image.GetSize()} != label size {label.GetSize()}")
    corners = organ_corners(label, len(class_names))
    present = np.array([len(c) > 0 for c in corners])
    # A contoured organ is annotated whatever the list says (as in organdetr.dataset).
    annotated = np.array([name in record.annotated for name in class_names]) | present
    return CaseData(record.name, image, corners, annotated)


def make_scene(case: CaseData, config: SceneConfig, index: int = 0, device: torch.device | str = "cpu") -> Scene:
    """Draw scene ``index`` of a case (deterministic in the settings, the case name and ``index``)."""
    geometry = scene_geometry(config, scan_centre(case.ct), _scene_rng(config, case.name, index))
    cameras = geometry.cameras()
    boxes3d = np.stack([world_box(c) for c in case.corners])
    boxes2d = np.stack([silhouette_boxes(cameras, c) for c in case.corners], axis=1)
    images = None
    if config.render:
        volume = AttenuationVolume.from_image(case.ct, device, config.render_config)
        images = render_views(volume, cameras, config.render_config).cpu()
    return Scene(case.name, geometry, images, boxes2d, boxes3d, case.annotated)


class SceneCache:
    """Scenes built once and kept on disk (``directory``) as ``.pt`` files of arrays; without a directory every
    request builds the scene."""

    def __init__(self, class_names: Sequence[str], config: SceneConfig, directory: str | Path | None = None) -> None:
        self.class_names = tuple(class_names)
        self.config = config
        self.directory = Path(directory) if directory is not None else None
        # The last case read, for the next scenes of the same case (one case: 170 CTs would not fit in memory).
        self._last_case: tuple[list, CaseData] | None = None

    @staticmethod
    def _case_identity(record: CaseRecord) -> list:
        """The files (path, size, modification time) and annotated organs a case's scenes depend on."""
        stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in (record.image, record.label)]
        return [stats, sorted(record.annotated)]

    def key(self, record: CaseRecord, index: int) -> str:
        settings = [_CACHE_VERSION, self._case_identity(record), self.class_names, asdict(self.config), index]
        return hashlib.sha256(json.dumps(settings, default=list).encode()).hexdigest()[:24]

    def _case(self, record: CaseRecord) -> CaseData:
        identity = self._case_identity(record)
        if self._last_case is None or self._last_case[0] != identity:
            self._last_case = (identity, read_case(record, self.class_names))
        return self._last_case[1]

    def get(self, record: CaseRecord, index: int = 0, device: torch.device | str = "cpu") -> Scene:
        if self.directory is None:
            return make_scene(self._case(record), self.config, index, device)
        file = self.directory / f"{record.name}-{index}-{self.key(record, index)}.pt"
        if file.is_file():
            stored = torch.load(file, weights_only=True)
            return Scene(
                case=record.name,
                geometry=CArmGeometry(**{**stored["geometry"], "isocenter": tuple(stored["geometry"]["isocenter"])}),
                images=stored.get("images"),
                boxes2d=stored["boxes2d"].numpy(),
                boxes3d=stored["boxes3d"].numpy(),
                annotated=stored["annotated"].numpy(),
            )
        scene = make_scene(self._case(record), self.config, index, device)
        stored = {
            "geometry": asdict(scene.geometry),
            "boxes2d": torch.from_numpy(scene.boxes2d),
            "boxes3d": torch.from_numpy(scene.boxes3d),
            "annotated": torch.from_numpy(scene.annotated),
        }
        if scene.images is not None:
            stored["images"] = scene.images
        self.directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(file, suffix=".pt") as temporary:
            torch.save(stored, temporary)
        return scene


@dataclass(frozen=True)
class PhotometricConfig:
    """Random changes of a radiograph's appearance that leave its geometry alone (beam energy, detector gain and
    offset, quantum noise, focal-spot and detector blur)."""

    gain_range: tuple[float, float] = (0.8, 1.25)  # multiplies line integrals (effective energy)
    offset_std: float = 0.1  # added to line integrals (detector offset / log-conversion reference)
    max_noise_std: float = 0.05  # Gaussian noise, std drawn per view in [0, max]
    max_blur_sigma_px: float = 1.0  # Gaussian blur, sigma drawn per view in [0, max]


def _gaussian_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    kernel = torch.exp(-0.5 * (offsets / max(sigma, 1e-6)) ** 2)
    return kernel / kernel.sum()


def augment_views(
    images: torch.Tensor, config: PhotometricConfig = PhotometricConfig(), generator: torch.Generator | None = None
) -> torch.Tensor:
    """Photometrically augmented copies of views ``[views, rows, columns]`` (each view drawn independently)."""
    device = images.device

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    augmented = []
    for view in images:
        sigma = uniform(0.0, config.max_blur_sigma_px)
        if sigma > 0.05:
            kernel = _gaussian_kernel(sigma, device)
            padding = len(kernel) // 2
            view = F.conv2d(F.pad(view[None, None], (padding,) * 4, mode="replicate"), kernel.view(1, 1, 1, -1))
            view = F.conv2d(view, kernel.view(1, 1, -1, 1))[0, 0]
        view = view * uniform(*config.gain_range) + config.offset_std * float(torch.randn((), generator=generator))
        noise = torch.randn(view.shape, generator=generator).to(device)
        augmented.append(view + uniform(0.0, config.max_noise_std) * noise)
    return torch.stack(augmented)
