"""The one versioned result schema shared by the CLI, the HTTP service and the Slicer module.

Defined in the torch-free client (:mod:`organdetr_client.schema`) and re-exported here for the backend's modules;
``python -m organdetr_backend.schema`` regenerates the published JSON Schema file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from organdetr_client.schema import *  # noqa: F403  (re-export: the backend's modules import the models from here)
from organdetr_client.schema import json_schema

SCHEMA_FILE = Path(__file__).resolve().parent / "schema" / "detection-result.schema.json"


def write_schema_file(path: Path = SCHEMA_FILE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_schema(), indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write_schema_file(Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_FILE)
