"""Training data: MSD-style ``dataset.json`` parsing, cached shared preprocessing, augmentation, collation.

``dataset.json`` follows the Medical Segmentation Decathlon convention: ``labels`` maps label values to organ
names (``"0"`` is background), and the splits ``training`` / ``validation`` / ``test`` list ``{"image", "label"}``
entries with paths relative to the file. An optional per-case ``annotated`` list names the organs contoured in that
case (partial labels); without it every organ is taken as annotated.

Each case is read with SimpleITK and run through the SHARED preprocessing of :mod:`organdetr.preprocess` exactly
once (:class:`CaseCache`, in memory and optionally on disk), so later epochs never touch NIfTI again. Random
augmentation (MONAI) then acts on the cached image and label map together, and the ground-truth boxes are recomputed
from the augmented label map, never transformed as boxes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai import transforms as mt
from organdetr_client.same_grid import grid_differences

from .atomic_file import atomic_path
from .box_ops import boxes_from_label_map
from .config import AugmentConfig, FieldOfViewConfig, PreprocessConfig
from .errors import UserInputError
from .field_of_view import WHOLE_SCAN, sample_training_window
from .preprocess import (
    PreprocessedVolume,
    network_to_physical_matrix,
    preprocess_image,
    preprocess_label,
)

if TYPE_CHECKING:
    import SimpleITK as sitk

SPLITS = ("training", "validation", "test")
# Organs smaller than this (after resampling / augmentation) are fragments, not detectable objects (as in v1).
MIN_OBJECT_VOXELS = 5
# Cache format version: bump when the cached content changes so stale files are rebuilt, not misread.
_CACHE_VERSION = 3


@dataclass(frozen=True)
class CaseRecord:
    """One ``{"image", "label"}`` entry of a split, with absolute paths and its annotated organs."""

    name: str
    image: Path
    label: Path
    annotated: tuple[str, ...]  # organ names contoured in this case (all organs when the entry does not say)


class DescribedData:
    """What a run records and checks of its training data, a ``dataset.json`` or a training pack alike."""

    path: Path
    name: str
    class_names: tuple[str, ...]  # class index c = label value c + 1
    splits: dict[str, tuple]  # split -> its cases

    @property
    def dataset_json(self) -> str:
        return str(self.path)

    def summary(self) -> dict[str, Any]:
        """What a checkpoint records about its training data (``DetectorConfig.training_data``)."""
        return {
            "name": self.name,
            "dataset_json": self.dataset_json,
            "class_names": list(self.class_names),
            "splits": {split: len(cases) for split, cases in self.splits.items()},
        }

    def check_class_names(self, class_names: Sequence[str]) -> None:
        """Raise a clear error when a model's organ names (in order) differ from the data's."""
        if tuple(class_names) != self.class_names:
            raise UserInputError(
                f"{self.path}: labels {list(self.class_names)} do not match the model's classes {list(class_names)}"
            )


@dataclass(frozen=True)
class DatasetDescription(DescribedData):
    """A parsed ``dataset.json``: organ names in label-value order and the requested splits."""

    path: Path
    name: str
    class_names: tuple[str, ...]  # class index c = label value c + 1
    splits: dict[str, tuple[CaseRecord, ...]]

    def median_spacing(self, orientation: str) -> tuple[float, float, float]:
        """The training images' median spacing along the network axes (``--target-spacing auto``)."""
        return median_spacing(self.splits["training"], orientation)

    def preprocessed_cases(
        self,
        split: str,
        preprocess: PreprocessConfig,
        cache_dir: Path | None = None,
        progress: Callable[[Sequence[CaseRecord]], Iterable[CaseRecord]] = iter,
    ) -> list[PreprocessedCase]:
        """The split's cases through the shared preprocessing (read once, cached in ``cache_dir`` when given)."""
        cache = CaseCache(self.class_names, preprocess, cache_dir)
        return [cache.get(record) for record in progress(self.splits[split])]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserInputError(f"dataset file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserInputError(f"cannot read dataset file {path}: {error}") from None
    except json.JSONDecodeError as error:
        raise UserInputError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: expected a JSON object with 'labels' and split lists")
    return data


def _parse_labels(path: Path, labels: Any) -> tuple[str, ...]:
    """``{"0": "background", "1": "Brainstem", ...}`` -> organ names for label values 1..K (no gaps)."""
    if not isinstance(labels, dict) or not labels:
        raise UserInputError(f"{path}: 'labels' must be an object mapping label values to organ names")
    try:
        by_value = {int(value): str(name) for value, name in labels.items()}
    except ValueError:
        raise UserInputError(f"{path}: 'labels' keys must be integer label values, got {list(labels)}") from None
    organs = sorted(value for value in by_value if value != 0)
    if organs != list(range(1, len(organs) + 1)):
        raise UserInputError(f"{path}: organ label values must be 1..K without gaps, got {organs}")
    names = tuple(by_value[value] for value in organs)
    if len(set(names)) != len(names):
        raise UserInputError(f"{path}: organ names in 'labels' must be unique, got {list(names)}")
    return names


def _parse_case(path: Path, split: str, index: int, entry: Any, class_names: tuple[str, ...]) -> CaseRecord:
    where = f"{path}: {split}[{index}]"
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("image"), str)
        or not isinstance(entry.get("label"), str)
    ):
        raise UserInputError(f"{where} must be an object with 'image' and 'label' paths")
    files = {key: (path.parent / entry[key]).resolve() for key in ("image", "label")}
    for key, file in files.items():
        if not file.is_file():
            raise UserInputError(f"{where}: {key} file not found: {file}")
    annotated = entry.get("annotated", list(class_names))
    if not isinstance(annotated, list) or not all(isinstance(name, str) for name in annotated):
        raise UserInputError(f"{where}: 'annotated' must be a list of organ names")
    unknown = sorted(set(annotated) - set(class_names))
    if unknown:
        raise UserInputError(f"{where}: annotated organs {unknown} are not in 'labels' {list(class_names)}")
    name = files["image"].parent.name if files["image"].name.startswith("ct.") else files["image"].name.split(".")[0]
    return CaseRecord(name=name, image=files["image"], label=files["label"], annotated=tuple(annotated))


def load_dataset_json(path: str | Path, splits: Sequence[str] = ("training",)) -> DatasetDescription:
    """Parse and check an MSD-style ``dataset.json``; every requested split must exist and be non-empty.

    Raises :class:`UserInputError` with the offending file and entry for unreadable or malformed JSON, missing
    splits, missing image/label files and ``annotated`` organ names that are not in ``labels``.
    """
    path = Path(path).expanduser().resolve()
    data = _read_json(path)
    class_names = _parse_labels(path, data.get("labels"))
    parsed: dict[str, tuple[CaseRecord, ...]] = {}
    for split in splits:
        entries = data.get(split)
        if not isinstance(entries, list) or not entries:
            available = [key for key in SPLITS if isinstance(data.get(key), list) and data[key]]
            raise UserInputError(f"{path}: no '{split}' split (non-empty list); available splits: {available}")
        parsed[split] = tuple(_parse_case(path, split, i, entry, class_names) for i, entry in enumerate(entries))
    return DatasetDescription(
        path=path, name=str(data.get("name", path.parent.name)), class_names=class_names, splits=parsed
    )


def available_splits(path: str | Path) -> list[str]:
    """The non-empty splits a ``dataset.json`` lists (without checking the files)."""
    data = _read_json(Path(path).expanduser().resolve())
    return [split for split in SPLITS if isinstance(data.get(split), list) and data[split]]


@dataclass
class PreprocessedCase:
    """A case after the shared preprocessing, as held in the cache."""

    name: str
    image: torch.Tensor  # [C, D0, D1, D2] float16 in [0, 1] (half the memory; ~1 HU resolution is plenty)
    label_map: torch.Tensor  # [D0, D1, D2] uint8 label values on the network grid
    annotated: torch.Tensor  # [K] bool
    index_to_network: np.ndarray  # 4x4, see PreprocessedVolume
    network_spacing_mm: np.ndarray  # [3] physical size of one network voxel along each network axis

    def volume(self) -> PreprocessedVolume:
        """The network input in the form the shared inference path takes."""
        return PreprocessedVolume(image=self.image.float(), index_to_network=self.index_to_network)


def network_spacing_mm(image: sitk.Image, index_to_network: np.ndarray) -> np.ndarray:
    """Physical length (mm) of one network voxel step along each network axis."""
    return np.linalg.norm(network_to_physical_matrix(image, index_to_network)[:3, :3], axis=0)


def _last_line(error: Exception) -> str:
    """ITK's own reason, the last line of its multi-line error message."""
    return str(error).strip().splitlines()[-1]


def median_spacing(records: Sequence[CaseRecord], orientation: str) -> tuple[float, float, float]:
    """Median voxel spacing of the cases' images along the network axes (after reorientation), from headers only."""
    import SimpleITK as sitk  # where images are read: training from a pack (organdetr.training_pack) needs no ITK

    spacings = []
    for record in records:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(record.image))
        try:
            reader.ReadImageInformation()
        except RuntimeError as error:
            raise UserInputError(f"cannot read image {record.image}: {_last_line(error)}") from None
        # A 2-voxel image with the same spacing and direction reorients exactly as the case would.
        probe = sitk.Image([2, 2, 2], sitk.sitkUInt8)
        probe.SetSpacing(reader.GetSpacing())
        probe.SetDirection(reader.GetDirection())
        spacings.append(sitk.DICOMOrient(probe, orientation).GetSpacing())
    median = np.median(np.asarray(spacings, dtype=np.float64), axis=0)
    return tuple(round(float(v), 3) for v in median)  # type: ignore[return-value]


def _read_image(path: Path, what: str) -> sitk.Image:
    import SimpleITK as sitk  # see median_spacing

    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise UserInputError(f"cannot read {what} {path}: {_last_line(error)}") from None


def preprocess_case(record: CaseRecord, class_names: Sequence[str], config: PreprocessConfig) -> PreprocessedCase:
    """Read a case's CT and label map and apply the shared preprocessing."""
    image = _read_image(record.image, "image")
    label = _read_image(record.label, "label map")
    differences = grid_differences(image, label)
    if differences:  # a shifted or resampled label map would train misplaced boxes without a word
        raise UserInputError(f"{record.name}: the label map's grid differs from the image's ({'; '.join(differences)})")
    volume = preprocess_image(image, config)
    label_map = preprocess_label(label, config, volume.grid)
    num_classes = len(class_names)
    if int(label_map.min()) < 0 or int(label_map.max()) > num_classes:
        raise UserInputError(f"{record.name}: label values outside 0..{num_classes} in {record.label}")
    annotated = torch.tensor([name in record.annotated for name in class_names])
    # A contoured organ is annotated whatever the list says (the list can only add organs known to be absent).
    annotated[torch.unique(label_map)[torch.unique(label_map) > 0] - 1] = True
    return PreprocessedCase(
        name=record.name,
        image=volume.image.half(),
        label_map=label_map.to(torch.uint8),
        annotated=annotated,
        index_to_network=volume.index_to_network,
        network_spacing_mm=network_spacing_mm(image, volume.index_to_network),
    )


class CaseCache:
    """Preprocess each case once; keep the result in memory and, with ``directory``, on disk (``.npz``).

    Disk entries are keyed by the image/label paths, their sizes and modification times, the class names and the
    preprocessing settings, so a changed file or setting is re-preprocessed instead of read stale.
    """

    def __init__(self, class_names: Sequence[str], config: PreprocessConfig, directory: str | Path | None = None):
        self.class_names = tuple(class_names)
        self.config = config
        self.directory = Path(directory) if directory is not None else None
        self._memory: dict[tuple[Path, Path], PreprocessedCase] = {}

    def _key(self, record: CaseRecord) -> str:
        stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in (record.image, record.label)]
        text = json.dumps([_CACHE_VERSION, stats, self.class_names, self.config.__dict__], default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def get(self, record: CaseRecord, keep_in_memory: bool = True) -> PreprocessedCase:
        """The case preprocessed; ``keep_in_memory`` False: not held here (a caller that visits each case once)."""
        memory_key = (record.image, record.label)
        if not keep_in_memory:
            return self._memory.get(memory_key) or self._load_or_build(record)
        if memory_key not in self._memory:
            self._memory[memory_key] = self._load_or_build(record)
        return self._memory[memory_key]

    def _load_or_build(self, record: CaseRecord) -> PreprocessedCase:
        if self.directory is None:
            return preprocess_case(record, self.class_names, self.config)
        file = self.directory / f"{record.name}-{self._key(record)}.npz"
        if file.is_file():
            with np.load(file) as data:
                return PreprocessedCase(
                    name=record.name,
                    image=torch.from_numpy(data["image"]),
                    label_map=torch.from_numpy(data["label_map"]),
                    annotated=torch.from_numpy(data["annotated"]),
                    index_to_network=data["index_to_network"],
                    network_spacing_mm=data["network_spacing_mm"],
                )
        case = preprocess_case(record, self.class_names, self.config)
        self.directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(file, suffix=".npz") as temporary:  # np.savez appends .npz to other names
            np.savez(
                temporary,
                image=case.image.numpy(),
                label_map=case.label_map.numpy(),
                annotated=case.annotated.numpy(),
                index_to_network=case.index_to_network,
                network_spacing_mm=case.network_spacing_mm,
            )
        return case


def build_augmentation(
    config: AugmentConfig, spatial_size: Sequence[int], device: torch.device | None = None
) -> mt.Compose:
    """MONAI transform chain for a ``{"image", "label"}`` dict of channel-first tensors (on ``device``, if given)."""
    keys = ("image", "label")
    return mt.Compose(
        [
            mt.RandAffined(
                keys=keys,
                prob=config.affine_probability,
                rotate_range=[float(np.deg2rad(d)) for d in config.rotate_degrees],
                scale_range=[config.zoom] * 3,
                translate_range=[config.translate_fraction * n for n in spatial_size],
                mode=("bilinear", "nearest"),
                padding_mode="zeros",  # 0 = intensity_min (air) after the shared intensity scaling
                spatial_size=tuple(spatial_size),
                cache_grid=True,
                device=device,
            ),
            mt.RandScaleIntensityd(keys="image", factors=config.intensity_scale, prob=config.intensity_probability),
            mt.RandShiftIntensityd(keys="image", offsets=config.intensity_shift, prob=config.intensity_probability),
            mt.RandGaussianNoised(keys="image", std=config.noise_std, prob=config.noise_probability),
            mt.RandGaussianSmoothd(
                keys="image",
                sigma_x=config.smooth_sigma,
                sigma_y=config.smooth_sigma,
                sigma_z=config.smooth_sigma,
                prob=config.smooth_probability,
            ),
        ]
    )


def make_target(label_map: torch.Tensor, annotated: torch.Tensor) -> dict[str, torch.Tensor]:
    """Criterion target of one volume: boxes recomputed from its (augmented) label map (on the CPU: a handful of
    numbers; the label map itself stays where it is)."""
    labels, boxes = boxes_from_label_map(label_map.cpu(), len(annotated), min_voxels=MIN_OBJECT_VOXELS)
    return {"labels": labels, "boxes": boxes, "annotated": annotated.clone().cpu(), "label_map": label_map.long()}


def _on_device(case: PreprocessedCase, device: torch.device) -> PreprocessedCase:
    """``case`` with its image, label map and annotated flags on ``device`` (the image stays float16)."""
    return replace(
        case, image=case.image.to(device), label_map=case.label_map.to(device), annotated=case.annotated.to(device)
    )


class DetectionDataset(torch.utils.data.Dataset):
    """Cached, preprocessed cases -> ``(image [1, *window] float32, target dict, case name)``.

    Each sample is a random field of view of its case in one network window (:mod:`organdetr.field_of_view`), then
    augmented; without ``field_of_view`` the case is used whole (``WHOLE_SCAN``: no simulated cut, at a random
    position under a window smaller than it). Randomness is a pure function of ``(seed, epoch, index)``, so a
    resumed run sees exactly the samples an uninterrupted run would, whatever the number of loader workers. The epoch
    is the one of :meth:`set_epoch`, or comes with the key: ``dataset[(epoch, index)]``
    (:class:`~organdetr.sampling.EpochOrder`, for workers that outlive an epoch).

    With ``device`` the cases are held there (moved once) and every sample is cut and augmented there, in the training
    process: on a GPU the affine resampling, the costly part on a CPU (a sample ~0.1 s on 2 threads), runs on the
    device (whether that beats many loader workers: ``benchmarks/training_pipeline.py``). The random choices are the
    same on every device (numpy generators seeded per sample), so are the samples.
    """

    def __init__(
        self,
        cases: Sequence[PreprocessedCase],
        window: Sequence[int],
        augment: AugmentConfig | None = None,
        field_of_view: FieldOfViewConfig | None = None,
        seed: int = 0,
        device: torch.device | None = None,
    ):
        self.cases = [_on_device(case, device) for case in cases] if device is not None else list(cases)
        self.window = tuple(int(n) for n in window)
        self.field_of_view = field_of_view if field_of_view is not None else WHOLE_SCAN
        self.seed = seed
        self.epoch = 0
        self.transform = build_augmentation(augment, self.window, device) if augment is not None else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, torch.Tensor], str]:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        case = self.cases[index]
        sample_seed = (self.seed * 1_000_003 + epoch * 10_007 + index) % 2**32
        image, label_map, annotated = case.image.float(), case.label_map, case.annotated
        cut = sample_training_window(
            image, label_map, annotated, self.window, self.field_of_view, np.random.default_rng(sample_seed)
        )
        image, label_map, annotated = cut.image, cut.label_map, cut.annotated
        if self.transform is not None:
            self.transform.set_random_state(seed=sample_seed)
            sample = self.transform({"image": image, "label": label_map[None].float()})
            image = torch.as_tensor(sample["image"]).float()
            label_map = torch.as_tensor(sample["label"])[0].round().to(torch.uint8)
        return image, make_target(label_map, annotated), case.name


def collate(
    batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor], str]],
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]], list[str]]:
    """Stack images; keep targets (variable number of organs) and names as lists."""
    images, targets, names = zip(*batch, strict=True)
    return torch.stack(images), list(targets), list(names)
