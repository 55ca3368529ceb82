"""``organdetr detect``: detect organs in one or many CT volumes and write the boxes.

Outputs: one input without ``-o`` prints the result to stdout; one input with ``-o FILE`` writes that file (an
existing folder gets ``<name>.organdetr.json`` / ``.mrk.json`` / ``.csv`` inside); several inputs need ``-o FOLDER``
and are processed as a batch with a progress bar, where a failing input is reported in one line and the others
still run. ``--seg-preview`` and ``--overlay`` name a file for one input and a folder for several. Nothing is
overwritten without ``--overwrite``. Exit codes: 0 all done, 2 some input (or usage) was bad, 1 internal error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from organdetr.errors import UserInputError

from .cli import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE
from .output_file import check_writable, full_suffix

DEFAULT_TOP_K = 3
MAX_TOP_K = 20
INPUT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".zip")
RESULT_SUFFIXES = {"json": ".organdetr.json", "mrk": ".mrk.json", "csv": ".csv"}
SEG_PREVIEW_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
SEG_PREVIEW_DEFAULT_SUFFIX = ".seg.nii.gz"
OVERLAY_SUFFIX = ".png"
OVERLAY_DEFAULT_SUFFIX = ".overlay.png"
# Names that are meant as files, never created as output folders by mistake.
FILE_SUFFIXES = frozenset({*SEG_PREVIEW_SUFFIXES, OVERLAY_SUFFIX, ".json", ".mrk.json", ".csv"})
DEBUG_ENV = "ORGANDETR_DEBUG"  # as in cli.py: re-raise for the traceback


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="CT volume file, DICOM folder or .zip of one")
    parser.add_argument("-o", "--output", type=Path, help="output file (one input) or folder (several inputs)")
    parser.add_argument("--model", default=None, help="shipped model name or checkpoint folder (default: shipped)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--format", default="json", choices=sorted(RESULT_SUFFIXES), help="result format")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="boxes per organ: best + candidates")
    parser.add_argument("--seg-preview", type=Path, help="write the segmentation heads' label map (.nii.gz, .nrrd)")
    parser.add_argument("--overlay", type=Path, help="write a quick-look PNG with the boxes on the CT")
    parser.add_argument("--series-uid", help="DICOM SeriesInstanceUID to use when a folder holds several series")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


@dataclass
class Task:
    """One input and where its outputs go (``result`` None: print to stdout)."""

    input: Path
    result: Path | None
    seg_preview: Path | None
    overlay: Path | None


def input_stem(path: Path) -> str:
    """The input's name without its image extension (a folder keeps its name)."""
    name = path.name
    for suffix in INPUT_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def unique_stems(paths: list[Path]) -> list[str]:
    """Output base names, one per input: the stem, or ``<folder>_<stem>`` (then ``-N``) where stems collide."""
    stems = [input_stem(p) for p in paths]
    counts = Counter(stems)
    stems = [f"{p.resolve().parent.name}_{s}" if counts[s] > 1 else s for p, s in zip(paths, stems, strict=True)]
    seen: Counter[str] = Counter()
    unique = []
    for stem in stems:
        seen[stem] += 1
        unique.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return unique


def _output_path(option: Path | None, stem: str, suffix: str, batch: bool) -> Path | None:
    """A file for one input (or inside an existing folder; missing parent folders are created), a folder (created)
    holding ``stem + suffix`` for many."""
    if option is None:
        return None
    if batch:
        looks_like_a_file = full_suffix(option) in FILE_SUFFIXES
        if (option.exists() and not option.is_dir()) or (not option.exists() and looks_like_a_file):
            raise UserInputError(f"{option}: must be a folder when there are several inputs")
        option.mkdir(parents=True, exist_ok=True)
        return option / f"{stem}{suffix}"
    if option.is_dir():
        return option / f"{stem}{suffix}"
    option.parent.mkdir(parents=True, exist_ok=True)
    return option


def _require_suffix(option: str, path: Path, suffixes: tuple[str, ...]) -> None:
    if full_suffix(path) not in suffixes:
        raise UserInputError(f"{option} {path}: the file name must end with {' or '.join(suffixes)}")


def plan_tasks(args: argparse.Namespace) -> list[Task]:
    """Validate the options and decide every output path before any work is done."""
    inputs = [Path(p) for p in args.inputs]
    batch = len(inputs) > 1
    if not 1 <= args.top_k <= MAX_TOP_K:
        raise UserInputError(f"--top-k must be between 1 and {MAX_TOP_K}")
    if batch and args.output is None:
        raise UserInputError("several inputs need -o FOLDER for the results")
    if batch and args.series_uid is not None:
        raise UserInputError("--series-uid applies to a single DICOM input")
    single_file = not batch
    if args.seg_preview is not None and single_file and not args.seg_preview.is_dir():
        _require_suffix("--seg-preview", args.seg_preview, SEG_PREVIEW_SUFFIXES)
    if args.overlay is not None and single_file and not args.overlay.is_dir():
        _require_suffix("--overlay", args.overlay, (OVERLAY_SUFFIX,))
    tasks = []
    for path, stem in zip(inputs, unique_stems(inputs), strict=True):
        tasks.append(
            Task(
                input=path,
                result=_output_path(args.output, stem, RESULT_SUFFIXES[args.format], batch),
                seg_preview=_output_path(args.seg_preview, stem, SEG_PREVIEW_DEFAULT_SUFFIX, batch),
                overlay=_output_path(args.overlay, stem, OVERLAY_DEFAULT_SUFFIX, batch),
            )
        )
    return tasks


def _result_writers() -> dict[str, tuple[Callable, Callable]]:
    """Per format: (write to a path, render as text for stdout)."""
    from .export import result_to_csv, result_to_markups, write_csv, write_markups, write_result_json

    return {
        "json": (write_result_json, lambda result: result.model_dump_json(indent=2)),
        "mrk": (write_markups, lambda result: json.dumps(result_to_markups(result), indent=2)),
        "csv": (write_csv, result_to_csv),
    }


def _error_line(task: Task, error: BaseException) -> str:
    """``<input>: <message>``, without repeating the file name that image_io messages start with."""
    message = str(error)
    prefix = f"{task.input.name}: "
    return f"{task.input}: {message.removeprefix(prefix)}"


def _process(task: Task, predictor, args: argparse.Namespace, write_result: Callable, render_result: Callable) -> None:
    """Read one input, detect, write every requested output (raises on the first problem)."""
    import SimpleITK as sitk
    from tqdm import tqdm

    from .image_io import read_image
    from .output_file import atomic_output
    from .overlay import render_overlay

    for output in (task.result, task.seg_preview, task.overlay):
        if output is not None:
            check_writable(output, args.overwrite)
    start = time.perf_counter()
    loaded = read_image(task.input, args.series_uid)
    read_s = time.perf_counter() - start
    if loaded.note:
        tqdm.write(f"organdetr detect: note: {task.input}: {loaded.note}", file=sys.stderr)
    prediction = predictor.predict(loaded, top_k=args.top_k, segmentation=task.seg_preview is not None, read_s=read_s)
    if task.result is None:
        print(render_result(prediction.result), flush=True)
    else:
        write_result(prediction.result, task.result, overwrite=args.overwrite)
    if task.seg_preview is not None and prediction.segmentation is not None:
        with atomic_output(task.seg_preview, args.overwrite) as temp:
            sitk.WriteImage(prediction.segmentation, str(temp), useCompression=True)
    if task.overlay is not None:
        render_overlay(loaded.image, prediction.result, task.overlay, overwrite=args.overwrite)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .predictor import Predictor

    tasks = plan_tasks(args)
    write_result, render_result = _result_writers()[args.format]
    predictor = Predictor(args.model, args.device)
    batch = len(tasks) > 1
    bad = internal = 0
    for task in tqdm(tasks, unit="image", file=sys.stderr, disable=None if batch else True, dynamic_ncols=True):
        try:
            _process(task, predictor, args, write_result, render_result)
        except UserInputError as error:
            bad += 1
            tqdm.write(f"organdetr detect: error: {_error_line(task, error)}", file=sys.stderr)
        except Exception as error:  # one broken input must not stop the batch; the exit code says so
            if os.environ.get(DEBUG_ENV):
                raise
            internal += 1
            tqdm.write(
                f"organdetr detect: internal error: {_error_line(task, error)} ({type(error).__name__})",
                file=sys.stderr,
            )
    if batch:
        print(f"organdetr detect: {len(tasks) - bad - internal} of {len(tasks)} inputs done", file=sys.stderr)
    if internal:
        return EXIT_INTERNAL
    return EXIT_USAGE if bad else EXIT_OK
