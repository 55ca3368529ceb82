"""``organdetr pack``: a dataset's preprocessed cases in one compressed file that ``organdetr train --data`` takes.

Training runs every case through the shared preprocessing once (:class:`~organdetr.dataset.CaseCache`). A pack holds
the result for the splits of a ``dataset.json``: images quantised to 8 bits over the network's intensity windows
(2000 HU / 255 = 7.8 HU steps over [-1000, 1000] HU, below CT noise), label maps and geometry exact, with the organ
names, the split lists, the preprocessing settings and the training images' median spacing. It carries a dataset to
another machine (a rented GPU) as one file, and training from it reads neither NIfTI files nor needs SimpleITK. A
run trains from a pack only with the preprocessing it was made with (the ``--model``'s)::

    organdetr pack --data dataset.json --output openkbp.npz              # the shipped model's preprocessing
    organdetr train --data openkbp.npz --init-weights default --output runs/gpu ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import lzma
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic_file import atomic_path, check_writable
from .config import PreprocessConfig, _from_dict
from .dataset import (
    CaseCache,
    DescribedData,
    PreprocessedCase,
    available_splits,
    load_dataset_json,
    median_spacing,
)
from .errors import UserInputError

PACK_FORMAT = "organdetr-training-pack"
PACK_VERSION = 1
PACK_SUFFIX = ".npz"
IMAGE_LEVELS = 255  # 8-bit quantisation of the [0, 1] network intensities
_CASE_ARRAYS = ("image", "label_map", "annotated", "index_to_network", "network_spacing_mm")


@dataclass(frozen=True)
class TrainingPack(DescribedData):
    """A pack's description (what :class:`~organdetr.dataset.DatasetDescription` says of a ``dataset.json``); the
    cases are read by :meth:`preprocessed_cases`."""

    path: Path
    name: str
    source: str  # the dataset.json it was made from
    class_names: tuple[str, ...]
    splits: dict[str, tuple[str, ...]]  # split -> case names, in the pack's order
    preprocess: PreprocessConfig
    training_median_spacing_mm: tuple[float, float, float]  # along the network axes of preprocess.orientation

    @property
    def dataset_json(self) -> str:
        return self.source

    def summary(self) -> dict[str, Any]:
        return super().summary() | {"training_pack": str(self.path)}

    def median_spacing(self, orientation: str) -> tuple[float, float, float]:
        """The training images' median spacing along the network axes (``--target-spacing auto``)."""
        if orientation != self.preprocess.orientation:
            raise UserInputError(
                f"{self.path} was made for orientation {self.preprocess.orientation}, not {orientation}"
            )
        return self.training_median_spacing_mm

    def preprocessed_cases(
        self, split: str, preprocess: PreprocessConfig, cache_dir: Path | None = None, progress: Callable = iter
    ) -> list:
        """The split's :class:`~organdetr.dataset.PreprocessedCase` list (as
        :meth:`~organdetr.dataset.DatasetDescription.preprocessed_cases` gives); ``preprocess`` (the run's) must be the
        pack's. ``cache_dir`` and ``progress`` are not used: the pack is the cache, read in seconds."""
        if preprocess != self.preprocess:
            differences = [
                f"{field.name} {getattr(self.preprocess, field.name)!r} (run: {getattr(preprocess, field.name)!r})"
                for field in dataclasses.fields(PreprocessConfig)
                if getattr(self.preprocess, field.name) != getattr(preprocess, field.name)
            ]
            raise UserInputError(
                f"{self.path} was preprocessed differently from this run: {'; '.join(differences)}; "
                "make a pack with this run's model (organdetr pack --model, and --soft-tissue-channel for a run that "
                "adds that channel)"
            )
        with _open(self.path) as arrays:
            try:
                return [self._case(arrays, split, i, name) for i, name in enumerate(self.splits[split])]
            except (OSError, EOFError, ValueError, zipfile.BadZipFile, lzma.LZMAError) as error:
                raise UserInputError(f"{self.path}: a case's data is damaged ({error}); make the pack again") from None

    @staticmethod
    def _case(arrays, split: str, i: int, name: str) -> PreprocessedCase:
        def array(key: str) -> np.ndarray:
            value = arrays[f"{split}/{i}/{key}"]
            if not isinstance(value, np.ndarray):  # np.load gives a member without the .npy header as bytes
                raise ValueError(f"{split}/{i}/{key} is not an array")
            return value

        return PreprocessedCase(
            name=name,
            image=torch.from_numpy(array("image")).half().div_(IMAGE_LEVELS),
            label_map=torch.from_numpy(array("label_map")),
            annotated=torch.from_numpy(array("annotated")),
            index_to_network=array("index_to_network"),
            network_spacing_mm=array("network_spacing_mm"),
        )


def is_training_pack(path: str | Path) -> bool:
    """Whether ``path`` names a pack (a ``.npz`` file) rather than a ``dataset.json``."""
    return Path(path).suffix.lower() == PACK_SUFFIX


def load_training_data(path: str | Path):
    """What ``organdetr train --data`` names: a pack, or a ``dataset.json`` with its training split and its
    validation split where it lists one (:class:`~organdetr.dataset.DatasetDescription`)."""

    if is_training_pack(path):
        return _pack_holding(path, "training")
    return load_dataset_json(path, ["training"] + (["validation"] if "validation" in available_splits(path) else []))


def load_split(path: str | Path, split: str):
    """What ``organdetr evaluate --data`` names: a pack or a ``dataset.json``, holding ``split``."""
    return _pack_holding(path, split) if is_training_pack(path) else load_dataset_json(path, (split,))


def _pack_holding(path: str | Path, split: str) -> TrainingPack:
    pack = read_training_pack(path)
    if split not in pack.splits:
        raise UserInputError(f"{pack.path} holds no {split} split (it holds {list(pack.splits)})")
    return pack


def _open(path: Path):
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise UserInputError(f"cannot read training pack {path}: {error}") from None


def read_training_pack(path: str | Path) -> TrainingPack:
    """A pack's description; a clear error for a file that is not a pack of this version."""
    path = Path(path).expanduser().resolve()
    with _open(path) as arrays:
        if "meta" not in arrays.files:
            raise UserInputError(f"{path} is not an organdetr training pack (no 'meta' entry)")
        try:
            meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
            if meta.get("format") != PACK_FORMAT or meta.get("version") != PACK_VERSION:
                raise ValueError(f"format {meta.get('format')!r} version {meta.get('version')!r}")
            splits = {split: tuple(names) for split, names in meta["splits"].items()}
            missing = sorted(
                {
                    f"{split}/{i}/{key}"
                    for split, names in splits.items()
                    for i in range(len(names))
                    for key in _CASE_ARRAYS
                }
                - set(arrays.files)
            )
            if missing:
                raise ValueError(f"missing arrays {missing[:3]}")
            return TrainingPack(
                path=path,
                name=str(meta["name"]),
                source=str(meta["source"]),
                class_names=tuple(meta["class_names"]),
                splits=splits,
                preprocess=_from_dict(PreprocessConfig, meta["preprocess"]),
                training_median_spacing_mm=tuple(meta["training_median_spacing_mm"]),
            )
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
            raise UserInputError(
                f"{path} is not a readable organdetr training pack ({PACK_FORMAT} {PACK_VERSION}): {error}"
            ) from None


def write_training_pack(
    output: str | Path, data: str | Path, preprocess: PreprocessConfig, cache_dir: Path | None = None
) -> TrainingPack:
    """Preprocess every case of the ``dataset.json`` ``data``'s splits (reusing ``cache_dir``) into the pack
    ``output``, written atomically."""
    from tqdm import tqdm

    description = load_dataset_json(data, available_splits(data))
    meta = {
        "format": PACK_FORMAT,
        "version": PACK_VERSION,
        "name": description.name,
        "source": str(description.path),
        "class_names": list(description.class_names),
        "splits": {split: [record.name for record in records] for split, records in description.splits.items()},
        "preprocess": dataclasses.asdict(preprocess),
        "training_median_spacing_mm": list(median_spacing(description.splits["training"], preprocess.orientation)),
    }
    cache = CaseCache(description.class_names, preprocess, cache_dir)
    output = Path(output).expanduser()
    with (
        atomic_path(output, suffix=PACK_SUFFIX) as temporary,
        zipfile.ZipFile(temporary, "w", zipfile.ZIP_LZMA) as pack,
    ):
        # np.savez_compressed's layout with LZMA instead of deflate (np.load reads both): 18 % smaller for OpenKBP.
        # Written case by case, so that only one case is in memory whatever the dataset's size.
        def put(key: str, array: np.ndarray) -> None:
            with pack.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)

        put("meta", np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8))
        for split, records in description.splits.items():
            for i, record in enumerate(tqdm(records, desc=f"pack {split}", unit="case")):
                case = cache.get(record, keep_in_memory=False)
                put(f"{split}/{i}/image", case.image.float().mul(IMAGE_LEVELS).round_().to(torch.uint8).numpy())
                put(f"{split}/{i}/label_map", case.label_map.numpy())
                put(f"{split}/{i}/annotated", case.annotated.numpy())
                put(f"{split}/{i}/index_to_network", case.index_to_network)
                put(f"{split}/{i}/network_spacing_mm", case.network_spacing_mm)
    return read_training_pack(output)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="MSD-style dataset.json (all its splits are packed)")
    parser.add_argument("--output", required=True, type=Path, help="the pack file to write (.npz)")
    parser.add_argument(
        "--model",
        default="default",
        help="the model folder whose preprocessing the pack holds (default: the shipped model's); a run trains from "
        "the pack only with that preprocessing",
    )
    parser.add_argument(
        "--soft-tissue-channel",
        action="store_true",
        help="add the soft-tissue HU window to the model's preprocessing, as `organdetr train --soft-tissue-channel` "
        "does: the pack for such runs",
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="reuse (and fill) this preprocessing cache")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")


def run(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint

    if not is_training_pack(args.output):
        raise UserInputError(f"--output {args.output}: a training pack is a {PACK_SUFFIX} file")
    check_writable(args.output, args.overwrite)
    from .run_config import with_soft_tissue_window

    preprocess = load_checkpoint(args.model).config.preprocess
    if args.soft_tissue_channel:
        preprocess = with_soft_tissue_window(preprocess)
    pack = write_training_pack(args.output, args.data, preprocess, args.cache_dir)
    size_mb = pack.path.stat().st_size / 2**20
    counts = ", ".join(f"{len(names)} {split}" for split, names in pack.splits.items())
    print(f"{pack.path}: {counts} cases, {size_mb:.1f} MiB")
    return 0
