"""Atomic file writes: defined in the torch-free client (:mod:`organdetr_client.atomic_file`), re-exported here for
checkpoints, training logs, metrics and images."""

from organdetr_client.atomic_file import atomic_path as atomic_path
from organdetr_client.atomic_file import atomic_write_text as atomic_write_text
