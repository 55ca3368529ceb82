"""Atomic file writes: write a temporary file in the target's folder, then ``os.replace`` it into place.

Readers never see a partial file, and a failed write leaves the previous file (or none) untouched. The one mechanism
behind checkpoints, training logs, metrics, result exports and images. The file ends up with the permissions a plain
``open()`` would give it (the umask's), not the private 0600 of a temporary file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserInputError

_PROC_STATUS = Path("/proc/self/status")
_NEW_FILE_MODE = 0o666  # what open() asks for; the umask takes away from it


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux), else by setting and restoring."""
    try:
        for line in _PROC_STATUS.read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split(":", 1)[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (ending in ``suffix``, for writers that choose a format by it);
    when the block succeeds the temporary file replaces ``path``, otherwise it is removed."""
    path = Path(path)
    descriptor, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(descriptor)
    temp = Path(temp_name)
    try:
        yield temp
        os.chmod(temp, _NEW_FILE_MODE & ~current_umask())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` (newlines as given) to ``path`` atomically, flushed to disk before the rename."""
    with atomic_path(path) as temp, temp.open("w", encoding="utf-8", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


def check_writable(path: str | os.PathLike, overwrite: bool) -> None:
    """Refuse an existing file (unless ``overwrite``), a folder in its place and a missing folder, in one line each:
    a user's file is never replaced by accident."""
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"{path}: is a folder, not a file")
    if path.exists() and not overwrite:
        raise UserInputError(f"{path}: already exists; choose another name or allow overwriting (--overwrite)")
    if not path.parent.is_dir():
        raise UserInputError(f"{path}: folder {path.parent} does not exist")


def write_new_text(path: str | os.PathLike, text: str, overwrite: bool = False) -> Path:
    """:func:`check_writable`, then :func:`atomic_write_text`: how a user's output file is written."""
    check_writable(path, overwrite)
    return atomic_write_text(path, text)
