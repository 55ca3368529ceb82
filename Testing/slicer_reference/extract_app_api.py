"""Write the names slicer.app answers to in a Slicer release (Q_INVOKABLE methods, properties and public slots of
qSlicerCoreApplication and qSlicerApplication) to ``<tag>/slicer_app_api.json``.

Usage: python extract_app_api.py <Slicer git directory> v5.8.0
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

HEADERS = ("Base/QTCore/qSlicerCoreApplication.h", "Base/QTGUI/qSlicerApplication.h")


def api_names(header: str) -> set[str]:
    names = set(re.findall(r"Q_INVOKABLE\s+(?:static\s+)?[\w:<>\*&\s]+?\b(\w+)\s*\(", header))
    names |= set(re.findall(r"Q_PROPERTY\(\s*[\w:<>]+\s*\*?\s*(\w+)", header))
    slot_blocks = re.findall(
        r"public (?:Q_)?slots:(.*?)(?:\n\s*(?:public|protected|private|signals|Q_SIGNALS)\b)", header, flags=re.S
    )
    for block in slot_blocks:
        names |= set(re.findall(r"\b(\w+)\s*\([^;]*\)\s*(?:const)?\s*;", block))
    return names


def main(git_dir: str, tag: str) -> None:
    names: set[str] = set()
    for header in HEADERS:
        text = subprocess.run(
            ["git", f"--git-dir={git_dir}", "show", f"{tag}:{header}"], check=True, capture_output=True, text=True
        ).stdout
        names |= api_names(text)
    document = {"tag": tag, "headers": list(HEADERS), "names": sorted(names)}
    path = Path(__file__).resolve().parent / tag / "slicer_app_api.json"
    path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:3])
