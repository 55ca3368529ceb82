"""Writing and reading detection results: the versioned JSON, Slicer markups JSON (``.mrk.json``) and CSV.

The CLI, the HTTP service and the Slicer module all go through these functions. Every write is atomic (temporary
file in the same folder, then ``os.replace``) and refuses to overwrite an existing file unless told to.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from pydantic import ValidationError

from .atomic_file import write_new_text
from .errors import UserInputError
from .organ_terminology import organ_term
from .schema import READABLE_SCHEMA_VERSIONS, SCHEMA_NAME, DetectionResult

MARKUPS_SCHEMA_URL = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)
_MAX_REPORTED_PROBLEMS = 3
CSV_COLUMNS = (
    "organ",
    "class_id",
    "score",
    "presence",
    "present",
    "source",
    "coordinate_system",
    "center_x_mm",
    "center_y_mm",
    "center_z_mm",
    "size_0_mm",
    "size_1_mm",
    "size_2_mm",
    "orientation",
    "min_i",
    "min_j",
    "min_k",
    "max_i",
    "max_j",
    "max_k",
)


def write_result_json(result: DetectionResult, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a result as the versioned JSON document."""
    return write_new_text(path, result.model_dump_json(indent=2) + "\n", overwrite=overwrite)


def _summarise(error: ValidationError) -> str:
    problems = [f"{'.'.join(str(p) for p in item['loc']) or 'document'}: {item['msg']}" for item in error.errors()]
    shown = "; ".join(problems[:_MAX_REPORTED_PROBLEMS])
    more = len(problems) - _MAX_REPORTED_PROBLEMS
    return shown + (f"; and {more} more" if more > 0 else "")


def parse_result(document: object, name: str = "result") -> DetectionResult:
    """Validate a decoded JSON document as a :class:`DetectionResult`; one-line UserInputError otherwise."""
    if not isinstance(document, dict):
        raise UserInputError(f"{name}: expected a JSON object, got {type(document).__name__}")
    schema = (document.get("schema_name"), document.get("schema_version"))
    if schema[0] != SCHEMA_NAME or schema[1] not in READABLE_SCHEMA_VERSIONS:
        raise UserInputError(
            f"{name}: schema {schema[0]!r} version {schema[1]!r} is not {SCHEMA_NAME!r} version "
            f"{' or '.join(READABLE_SCHEMA_VERSIONS)}"
        )
    try:
        result = DetectionResult.model_validate(document)
    except ValidationError as error:
        raise UserInputError(f"{name}: invalid result ({_summarise(error)})") from None
    classes = result.model.classes
    for detection in result.detections:
        if detection.label not in classes:
            raise UserInputError(f"{name}: unknown organ {detection.label!r}; the model's classes are {classes}")
        if classes.index(detection.label) + 1 != detection.class_id:
            raise UserInputError(
                f"{name}: organ {detection.label!r} has class_id {detection.class_id}, "
                f"expected {classes.index(detection.label) + 1}"
            )
    return result


def read_result_json(path: str | os.PathLike) -> DetectionResult:
    """Read and validate a result JSON file written by :func:`write_result_json` (or edited by hand)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserInputError(f"{path.name}: cannot read ({error.__class__.__name__}: {error})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserInputError(f"{path.name}: not valid JSON ({error})") from None
    return parse_result(document, path.name)


def result_to_markups(result: DetectionResult) -> dict:
    """Slicer markups JSON document: one ROI (box) per detection, in LPS millimetres, coloured as the Slicer module
    colours the organ (:func:`organ_terminology.organ_term`)."""
    markups = []
    for detection in result.detections:
        color = list(organ_term(detection.label).colour)
        markups.append(
            {
                "type": "ROI",
                "name": detection.label,
                "coordinateSystem": detection.box.coordinate_system,
                "coordinateUnits": detection.box.units,
                "locked": False,
                "roiType": "Box",
                "insideOut": False,
                "center": list(detection.box.center),
                "size": list(detection.box.size),
                "orientation": list(detection.box.orientation),
                # Slicer's reader re-derives a Box ROI from its control points: without the centre point the
                # size reads back as zero, so write the one point Slicer itself writes for a box.
                "controlPoints": [
                    {
                        "id": "1",
                        "label": detection.label,
                        "position": list(detection.box.center),
                        "orientation": list(detection.box.orientation),
                        "positionStatus": "defined",
                    }
                ],
                "display": {"visibility": True, "color": color, "selectedColor": color},
            }
        )
    return {"@schema": MARKUPS_SCHEMA_URL, "markups": markups}


def write_markups(result: DetectionResult, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the detections as a Slicer ``.mrk.json`` file."""
    return write_new_text(path, json.dumps(result_to_markups(result), indent=2) + "\n", overwrite=overwrite)


def result_to_csv(result: DetectionResult) -> str:
    """One row per detection: organ, class, score, source, LPS centre and size (mm), orientation, voxel bounds."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for detection in result.detections:
        bounds = detection.voxel_bounds
        voxel_cells = [*bounds.min_ijk, *bounds.max_ijk_inclusive] if bounds else [""] * 6
        writer.writerow(
            [
                detection.label,
                detection.class_id,
                repr(detection.score),
                "" if detection.presence is None else repr(detection.presence),
                detection.present,
                detection.source,
                detection.box.coordinate_system,
                *(repr(v) for v in detection.box.center),
                *(repr(v) for v in detection.box.size),
                " ".join(repr(v) for v in detection.box.orientation),
                *voxel_cells,
            ]
        )
    for organ in result.absent:  # listed so that a spreadsheet shows every organ of the model, without a box
        cells = [organ.label, organ.class_id, "", repr(organ.presence), False]
        writer.writerow(cells + [""] * (len(CSV_COLUMNS) - len(cells)))
    return buffer.getvalue()


def write_csv(result: DetectionResult, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the detections as CSV."""
    return write_new_text(path, result_to_csv(result), overwrite=overwrite)
