"""``organdetr detect``: detect organs in one or many CT volumes and write the boxes.

Outputs: one input without ``-o`` prints the result to stdout; one input with ``-o FILE`` writes that file. A name
ending in ``/`` or an existing folder is a folder, holding ``<name>.organdetr.json`` / ``.mrk.json`` / ``.csv``;
several inputs need ``-o FOLDER`` and are processed as a batch (one progress line per input on stderr; with
``--format csv`` also one combined CSV), where a failing input is reported in one line and the others still run.
Output names come from the input's folder and name as given (``case7/ct.nii.gz`` -> ``case7_ct.organdetr.json``),
the same for one input as in a batch. ``--seg-preview`` and ``--overlay`` name a file or a folder in the same way.
The format follows ``-o``'s extension unless ``--format`` says otherwise (a contradiction is a usage error). Every
output is checked before the model is loaded, and nothing is overwritten without ``--overwrite``.
Exit codes: 0 all done, 2 some input (or usage) was bad, 1 internal error.
"""

from __future__ import annotations

import argparse
import csv
import io
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
from .organ_selection import check_organ_names, parse_organ_names
from .output_file import check_writable, full_suffix

DEFAULT_TOP_K = 3
MAX_TOP_K = 20
INPUT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".zip")
RESULT_SUFFIXES = {"json": ".organdetr.json", "mrk": ".mrk.json", "csv": ".csv"}
# The formats an output file name allows, the first one chosen when --format is not given (markups are JSON too).
FORMATS_BY_SUFFIX = {".mrk.json": ("mrk",), ".csv": ("csv",), ".json": ("json", "mrk")}
DEFAULT_FORMAT = "json"
BATCH_CSV_NAME = "organdetr-batch.csv"
BATCH_CSV_INPUT_COLUMN = "input"
SEG_PREVIEW_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
SEG_PREVIEW_DEFAULT_SUFFIX = ".seg.nii.gz"
OVERLAY_SUFFIX = ".png"
OVERLAY_DEFAULT_SUFFIX = ".overlay.png"
# Names that are meant as files, never created as output folders by mistake.
FILE_SUFFIXES = frozenset({*SEG_PREVIEW_SUFFIXES, OVERLAY_SUFFIX, ".json", ".mrk.json", ".csv"})
DEBUG_ENV = "ORGANDETR_DEBUG"  # as in cli.py: re-raise for the traceback
FOLDER_MARKS = tuple({"/", os.sep})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="CT volume file, DICOM folder or .zip of one")
    parser.add_argument(
        "-o", "--output", help="output file (one input) or folder (a name ending in / or an existing folder)"
    )
    parser.add_argument(
        "--model",
        default=None,
        help="installed model name or checkpoint folder (default: the shipped model; "
        "'organdetr models' lists the names)",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--format", choices=sorted(RESULT_SUFFIXES), help="result format (default: from -o's extension, else json)"
    )
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="boxes per organ: best + candidates")
    parser.add_argument(
        "--organs", nargs="+", metavar="NAME", help="only these organs (names or comma-separated lists)"
    )
    parser.add_argument(
        "--include-absent", action="store_true", help="also give a box for organs judged absent (present=false)"
    )
    parser.add_argument("--seg-preview", help="write the segmentation preview (label map: .nii.gz, .nrrd, or a folder)")
    parser.add_argument("--overlay", help="write a quick-look PNG with the boxes on the CT (.png, or a folder)")
    parser.add_argument("--series-uid", help="DICOM SeriesInstanceUID to use when a folder holds several series")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


@dataclass
class Task:
    """One input and where its outputs go (``result`` None: print to stdout)."""

    input: Path
    result: Path | None
    seg_preview: Path | None
    overlay: Path | None

    def outputs(self) -> list[Path]:
        return [path for path in (self.result, self.seg_preview, self.overlay) if path is not None]


@dataclass(frozen=True)
class OutputOption:
    """An output option as typed: the path, and whether it names a folder."""

    path: Path
    folder: bool

    @classmethod
    def parse(cls, text: str | None, batch: bool) -> OutputOption | None:
        """A trailing slash or an existing folder means a folder; with several inputs so does any name that is not
        an existing file and does not end like one (``-o results``)."""
        if text is None:
            return None
        path = Path(text)
        folder = text.endswith(FOLDER_MARKS) or path.is_dir()
        if batch and not folder:
            if path.exists() or full_suffix(path) in FILE_SUFFIXES:
                raise UserInputError(f"{text}: must be a folder when there are several inputs")
            folder = True
        return cls(path, folder)

    def target(self, stem: str, suffix: str) -> Path:
        """The file to write (missing folders are created)."""
        if self.folder:
            self.path.mkdir(parents=True, exist_ok=True)
            return self.path / f"{stem}{suffix}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self.path


def input_stem(path: Path) -> str:
    """The input's name without its image extension (a folder keeps its name)."""
    name = path.name
    for suffix in INPUT_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def output_stem(path: Path) -> str:
    """The base name of an input's outputs: ``<folder>_<stem>`` when the input is given with a folder (case folders
    often hold files all called ``ct.nii.gz``), else the stem. It depends on the input alone, so one input gets the
    same name on its own as in a batch."""
    folder = path.parent.resolve().name if path.parent != Path(".") else ""
    stem = input_stem(path)
    return f"{folder}_{stem}" if folder else stem


def unique_stems(paths: list[Path]) -> list[str]:
    """:func:`output_stem` of every input, with ``-2``, ``-3``... where two would still collide."""
    seen: Counter[str] = Counter()
    unique = []
    for stem in map(output_stem, paths):
        seen[stem] += 1
        unique.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return unique


def _require_suffix(option: str, path: Path, suffixes: tuple[str, ...]) -> None:
    if full_suffix(path) not in suffixes:
        raise UserInputError(
            f"{option} {path}: the file name must end with {' or '.join(suffixes)} (or / for a folder)"
        )


def result_format(requested: str | None, output: OutputOption | None) -> str:
    """``--format``, else the one ``-o``'s extension names, else JSON; a contradiction is a usage error."""
    allowed = FORMATS_BY_SUFFIX.get(full_suffix(output.path), ()) if output and not output.folder else ()
    if requested is not None and allowed and requested not in allowed:
        raise UserInputError(f"-o {output.path} is a {allowed[0]} file name but --format is {requested}")
    return requested or (allowed[0] if allowed else DEFAULT_FORMAT)


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
    output = OutputOption.parse(args.output, batch)
    seg_preview = OutputOption.parse(args.seg_preview, batch)
    overlay = OutputOption.parse(args.overlay, batch)
    if seg_preview is not None and not seg_preview.folder:
        _require_suffix("--seg-preview", seg_preview.path, SEG_PREVIEW_SUFFIXES)
    if overlay is not None and not overlay.folder:
        _require_suffix("--overlay", overlay.path, (OVERLAY_SUFFIX,))
    args.format = result_format(args.format, output)
    tasks = []
    for path, stem in zip(inputs, unique_stems(inputs), strict=True):
        tasks.append(
            Task(
                input=path,
                result=output.target(stem, RESULT_SUFFIXES[args.format]) if output else None,
                seg_preview=seg_preview.target(stem, SEG_PREVIEW_DEFAULT_SUFFIX) if seg_preview else None,
                overlay=overlay.target(stem, OVERLAY_DEFAULT_SUFFIX) if overlay else None,
            )
        )
    return tasks


def batch_csv_path(tasks: list[Task], output_format: str) -> Path | None:
    """Where a CSV batch writes its combined table (None: not a CSV batch)."""
    if len(tasks) < 2 or output_format != "csv" or tasks[0].result is None:
        return None
    path = tasks[0].result.parent / BATCH_CSV_NAME
    if any(path in task.outputs() for task in tasks):
        raise UserInputError(f"{path}: an input's output has the name of the combined CSV; rename that input")
    return path


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


def _unwritable_outputs(task: Task, overwrite: bool) -> str | None:
    """Why ``task``'s outputs cannot be written (None when they can): checked before the model is loaded."""
    for output in task.outputs():
        try:
            check_writable(output, overwrite)
        except UserInputError as error:
            return str(error)
    return None


def _process(task: Task, predictor, args: argparse.Namespace, write_result: Callable, render_result: Callable):
    """Read one input, detect, write every requested output (raises on the first problem); returns the result."""
    import SimpleITK as sitk

    from .image_io import read_image
    from .output_file import atomic_output

    start = time.perf_counter()
    loaded = read_image(task.input, args.series_uid)
    read_s = time.perf_counter() - start
    if loaded.note:
        print(f"organdetr detect: note: {task.input}: {loaded.note}", file=sys.stderr)
    prediction = predictor.predict(
        loaded,
        top_k=args.top_k,
        segmentation=task.seg_preview is not None,
        read_s=read_s,
        include_absent=args.include_absent,
        organs=args.organs,
    )
    if task.result is None:
        print(render_result(prediction.result), flush=True)
    else:
        write_result(prediction.result, task.result, overwrite=args.overwrite)
    if task.seg_preview is not None and prediction.segmentation is not None:
        with atomic_output(task.seg_preview, args.overwrite) as temp:
            sitk.WriteImage(prediction.segmentation, str(temp), useCompression=True)
    if task.overlay is not None:
        from .overlay import render_overlay  # matplotlib and scipy take a second to import: only when asked for

        render_overlay(loaded.image, prediction.result, task.overlay, overwrite=args.overwrite)
    return prediction.result


def _write_batch_csv(path: Path, rows_by_input: list[tuple[Path, str]], overwrite: bool) -> None:
    """One table for the whole batch: every input's CSV rows behind an ``input`` column, one header."""
    from organdetr.atomic_file import write_new_text

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for index, (input_path, table) in enumerate(rows_by_input):
        header, *rows = csv.reader(io.StringIO(table))
        if index == 0:
            writer.writerow([BATCH_CSV_INPUT_COLUMN, *header])
        writer.writerows([str(input_path), *row] for row in rows)
    write_new_text(path, buffer.getvalue(), overwrite=overwrite)


def run(args: argparse.Namespace) -> int:
    from .predictor import Predictor

    args.organs = parse_organ_names(args.organs) if args.organs is not None else None
    tasks = plan_tasks(args)
    combined_csv = batch_csv_path(tasks, args.format)
    bad = internal = 0
    runnable = []
    for task in tasks:
        problem = _unwritable_outputs(task, args.overwrite)
        if problem is None:
            runnable.append(task)
        else:
            bad += 1
            print(f"organdetr detect: error: {problem}", file=sys.stderr)
    if combined_csv is not None:
        check_writable(combined_csv, args.overwrite)
    if not runnable:
        return EXIT_USAGE
    write_result, render_result = _result_writers()[args.format]
    predictor = Predictor(args.model, args.device)
    if args.organs is not None:
        check_organ_names(args.organs, predictor.model_info.classes)
    batch = len(tasks) > 1
    csv_tables: list[tuple[Path, str]] = []
    for number, task in enumerate(runnable, start=1):
        progress = f"[{number}/{len(runnable)}] " if batch else ""
        start = time.perf_counter()
        try:
            result = _process(task, predictor, args, write_result, render_result)
        except UserInputError as error:
            bad += 1
            print(f"organdetr detect: {progress}error: {_error_line(task, error)}", file=sys.stderr)
            continue
        except Exception as error:  # one broken input must not stop the batch; the exit code says so
            if os.environ.get(DEBUG_ENV):
                raise
            internal += 1
            print(
                f"organdetr detect: {progress}internal error: {_error_line(task, error)} ({type(error).__name__})",
                file=sys.stderr,
            )
            continue
        if batch:
            print(
                f"organdetr detect: {progress}{task.input}: {len(result.detections)} organs in "
                f"{time.perf_counter() - start:.1f} s -> {task.result}",
                file=sys.stderr,
                flush=True,
            )
        if combined_csv is not None:
            csv_tables.append((task.input, render_result(result)))
    if combined_csv is not None and csv_tables:
        _write_batch_csv(combined_csv, csv_tables, args.overwrite)
    if batch:
        done = len(tasks) - bad - internal
        where = f"; all results in {combined_csv}" if combined_csv is not None and csv_tables else ""
        print(f"organdetr detect: {done} of {len(tasks)} inputs done{where}", file=sys.stderr)
    if internal:
        return EXIT_INTERNAL
    return EXIT_USAGE if bad else EXIT_OK
