"""Choosing a subset of a model's organs: ``--organs`` on the command line, the ``organs`` form field of the
service. Both check the names once, before any image is read."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from organdetr.errors import UserInputError


def parse_organ_names(values: Iterable[str]) -> list[str]:
    """Organ names from arguments that may each hold a comma-separated list (``A B``, ``A,B``), without repeats."""
    names = [name.strip() for value in values for name in value.split(",")]
    return list(dict.fromkeys(name for name in names if name))


def check_organ_names(organs: Sequence[str], classes: Sequence[str]) -> None:
    """Refuse names the model does not detect, listing the ones it does (before any image is read)."""
    unknown = [name for name in organs if name not in classes]
    if unknown or not organs:
        problem = f"unknown organ(s) {', '.join(unknown)}" if unknown else "no organ named"
        raise UserInputError(f"{problem}; this model detects {', '.join(classes)}")
