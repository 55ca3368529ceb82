"""Atomic file writes: defined in the torch-free client (:mod:`organdetr_client.atomic_file`), re-exported here for
checkpoints, training logs, metrics and images."""

from organdetr_client.atomic_file import atomic_path as atomic_path
from organdetr_client.atomic_file import atomic_write_text as atomic_write_text
from organdetr_client.atomic_file import check_writable as check_writable
from organdetr_client.atomic_file import write_new_text as write_new_text
