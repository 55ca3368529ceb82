"""Streaming multipart upload of one image file to a private temporary folder, with the size limit enforced while
the bytes arrive (nothing is buffered in memory beyond one chunk, and an oversized body is never fully stored)."""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from organdetr.errors import UserInputError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

MAX_FIELD_BYTES = 64 * 1024  # form fields are small options, never data
MULTIPART_OVERHEAD_BYTES = 1024 * 1024  # headers and option fields allowed on top of the file size limit
_UNSAFE_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")


class UploadTooLarge(Exception):
    """The upload exceeds the configured limit (HTTP 413)."""


class UploadTimeout(Exception):
    """The client stopped sending in the middle of an upload (HTTP 408)."""


@dataclass
class Upload:
    """An uploaded file in its own temporary folder (delete with :meth:`cleanup`) and the form's other fields."""

    path: Path
    fields: dict[str, str] = field(default_factory=dict)

    def cleanup(self) -> None:
        shutil.rmtree(self.path.parent, ignore_errors=True)


def safe_filename(name: str) -> str:
    """The client's file name reduced to a safe base name that keeps its extension (which selects the reader)."""
    base = re.split(r"[\\/]", name)[-1]
    cleaned = _UNSAFE_NAME_CHARACTERS.sub("_", base).lstrip(".")
    return cleaned or "upload"


class _FormCollector:
    """Callbacks for python-multipart: the file field goes to disk, other fields into a dict."""

    def __init__(self, file_field: str, directory: Path, max_bytes: int) -> None:
        self.file_field, self.directory, self.max_bytes = file_field, directory, max_bytes
        self.fields: dict[str, str] = {}
        self.path: Path | None = None
        self.finished = False
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._file: BinaryIO | None = None
        self._field_data = bytearray()
        self._file_bytes = 0

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._headers, self._field_data, self._file = {}, bytearray(), None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if filename is None:
            return
        if self._name != self.file_field:
            raise UserInputError(
                f"unexpected file field {self._name!r}; send the image as the {self.file_field!r} field"
            )
        if self.path is not None:
            raise UserInputError(f"send exactly one {self.file_field!r} file")
        self.path = self.directory / safe_filename(filename.decode("utf-8", "replace"))
        self._file = self.path.open("wb")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self._file_bytes += end - start
            if self._file_bytes > self.max_bytes:
                raise UploadTooLarge(f"the upload is larger than the limit of {self.max_bytes} bytes")
            self._file.write(data[start:end])
        else:
            self._field_data += data[start:end]
            if len(self._field_data) > MAX_FIELD_BYTES:
                raise UserInputError(f"form field {self._name!r} is too long")

    def _part_end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        else:
            self.fields[self._name] = self._field_data.decode("utf-8", "replace")

    def _end(self) -> None:
        self.finished = True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


async def receive_upload(
    request: Request,
    *,
    max_bytes: int,
    idle_timeout_s: float,
    file_field: str = "image",
    temp_root: Path | None = None,
) -> Upload:
    """Stream a ``multipart/form-data`` body to disk.

    Raises :class:`UploadTooLarge` (declared or actual size over ``max_bytes``), :class:`UploadTimeout` (no data for
    ``idle_timeout_s``) or :class:`UserInputError` (not multipart, malformed, incomplete, no file).
    """
    content_type, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise UserInputError(f"send multipart/form-data with the image in the {file_field!r} field")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + MULTIPART_OVERHEAD_BYTES:
        raise UploadTooLarge(f"the upload ({int(declared)} bytes) is larger than the limit of {max_bytes} bytes")

    directory = Path(tempfile.mkdtemp(prefix="organdetr-upload-", dir=temp_root))
    collector = _FormCollector(file_field, directory, max_bytes)
    parser = MultipartParser(boundary, collector.callbacks())
    chunks = request.stream().__aiter__()
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(chunks.__anext__(), idle_timeout_s)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError as error:
                raise UploadTimeout(f"no upload data received for {idle_timeout_s:g} s") from error
            except ClientDisconnect as error:
                raise UserInputError("the client disconnected during the upload") from error
            parser.write(chunk)
        parser.finalize()
    except BaseException as error:
        collector.close()
        shutil.rmtree(directory, ignore_errors=True)
        if isinstance(error, MultipartParseError):
            raise UserInputError(f"malformed multipart body: {error}") from error
        raise
    collector.close()
    if not collector.finished or collector.path is None:
        shutil.rmtree(directory, ignore_errors=True)
        problem = "the upload is incomplete" if not collector.finished else f"no {file_field!r} file in the upload"
        raise UserInputError(problem)
    return Upload(path=collector.path, fields=collector.fields)
