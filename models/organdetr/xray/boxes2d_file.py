"""2D organ boxes per view on disk (``boxes2d.json``): true silhouettes from the renderer, or a detector's output.

::

    {"format": "organdetr.xray-boxes2d", "version": 1,
     "classes": ["Brainstem", "SpinalCord", ...],
     "boxes": [{"view": 0, "label": "Brainstem", "box": [u_min, v_min, u_max, v_max], "score": 1.0}, ...]}

Pixel coordinates as in :mod:`organdetr.xray.camera` (``u`` column, ``v`` row, pixel centres at integers); at most
one box per view and organ (a detector's best). Bad files are one-line :class:`~organdetr.errors.UserInputError`\\ s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..atomic_file import atomic_write_text
from ..errors import UserInputError

FORMAT_NAME = "organdetr.xray-boxes2d"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class BoxEntry(_Strict):
    view: int = Field(ge=0)
    label: str
    box: tuple[float, float, float, float]
    score: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0


class Boxes2DDocument(_Strict):
    format: Literal["organdetr.xray-boxes2d"] = FORMAT_NAME
    version: Literal[1] = 1
    classes: list[str] = Field(min_length=1)
    boxes: list[BoxEntry]


@dataclass(eq=False)
class Boxes2D:
    """Boxes ``[views, organs, 4]`` and scores ``[views, organs]``; NaN where a view has no box for an organ."""

    class_names: tuple[str, ...]
    boxes: np.ndarray
    scores: np.ndarray


def read_boxes2d(path: str | os.PathLike, num_views: int) -> Boxes2D:
    """Read and validate a ``boxes2d.json`` for a set of ``num_views`` views."""
    path = Path(path)
    try:
        document = Boxes2DDocument.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserInputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserInputError(f"{path}: cannot be read ({error})") from None
    except ValidationError as error:
        first = error.errors()[0]
        place = ".".join(str(part) for part in first["loc"])
        raise UserInputError(f"{path}: {place}: {first['msg']}") from None
    if len(set(document.classes)) != len(document.classes):
        raise UserInputError(f"{path}: classes are not unique")
    column = {name: k for k, name in enumerate(document.classes)}
    boxes = np.full((num_views, len(column), 4), np.nan)
    scores = np.full((num_views, len(column)), np.nan)
    for i, entry in enumerate(document.boxes):
        where = f"{path}: boxes[{i}]"
        if entry.view >= num_views:
            raise UserInputError(f"{where}: view {entry.view} does not exist (the views folder has {num_views})")
        if entry.label not in column:
            raise UserInputError(f"{where}: label {entry.label!r} is not one of the classes")
        if not (entry.box[0] < entry.box[2] and entry.box[1] < entry.box[3]):
            raise UserInputError(f"{where}: box must be [u_min, v_min, u_max, v_max] with min < max")
        k = column[entry.label]
        if np.isfinite(scores[entry.view, k]):
            raise UserInputError(f"{where}: a second box for {entry.label} in view {entry.view}")
        boxes[entry.view, k] = entry.box
        scores[entry.view, k] = entry.score
    return Boxes2D(tuple(document.classes), boxes, scores)


def write_boxes2d(path: str | os.PathLike, boxes: Boxes2D) -> Path:
    """Write the finite boxes atomically."""
    entries = [
        BoxEntry(view=v, label=name, box=tuple(boxes.boxes[v, k]), score=float(boxes.scores[v, k]))
        for v in range(boxes.boxes.shape[0])
        for k, name in enumerate(boxes.class_names)
        if np.isfinite(boxes.boxes[v, k]).all()
    ]
    document = Boxes2DDocument(classes=list(boxes.class_names), boxes=entries)
    return atomic_write_text(path, document.model_dump_json(indent=1) + "\n")
