"""Atomic creation of output files that a library writes by path (PNG figures, images written by SimpleITK)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from organdetr.atomic_file import atomic_path, check_writable


def full_suffix(path: Path) -> str:
    """The extension that selects a writer, including double ones such as ``.nii.gz``."""
    name = path.name.lower()
    for double in (".nii.gz", ".mrk.json"):
        if name.endswith(double):
            return double
    return path.suffix.lower()


@contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder (same extension); on success it replaces ``path`` atomically.

    Readers never see a partial file; an existing file is only replaced with ``overwrite``. The file gets the
    permissions the umask gives new files.
    """
    path = Path(path)
    check_writable(path, overwrite)
    with atomic_path(path, suffix=full_suffix(path)) as temp:
        yield temp
