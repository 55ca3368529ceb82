"""Checks for the parts CI cannot run (the Qt widget): CMake lists every file, the .ui parses and has every widget
the Python code uses, and every module file compiles."""

from __future__ import annotations

import py_compile
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[2] / "OrganDETRSlicer"
MODULE_NAME = "OrganDETRSlicer"


def _module_files() -> list[str]:
    files = sorted(str(path.relative_to(MODULE_DIR)) for path in MODULE_DIR.rglob("*.py"))
    files += sorted(str(path.relative_to(MODULE_DIR)) for path in (MODULE_DIR / "Resources").rglob("*.*"))
    # build/ is what pip leaves when it installs the client from this folder (git-ignored, never shipped).
    return [name for name in files if "__pycache__" not in name and not name.startswith("build/")]


def test_cmake_lists_every_script_and_resource():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8").replace("${MODULE_NAME}", MODULE_NAME)
    listed = set(re.findall(r"^\s+(\S+\.(?:py|png|ui))\s*$", cmake, flags=re.MULTILINE))
    assert listed == set(_module_files())
    assert "WITH_GENERIC_TESTS" in cmake and "slicer_add_python_unittest" in cmake


def test_extension_cmake_metadata():
    cmake = (MODULE_DIR.parent / "CMakeLists.txt").read_text(encoding="utf-8")
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert re.search(rf'set\(EXTENSION_{key} "[^"]+"\)', cmake), key
    assert "add_subdirectory(OrganDETRSlicer)" in cmake


def test_ui_has_every_widget_the_code_uses():
    tree = ElementTree.parse(MODULE_DIR / "Resources" / "UI" / f"{MODULE_NAME}.ui")
    names = {widget.get("name") for widget in tree.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE_DIR / f"{MODULE_NAME}.py").read_text(encoding="utf-8")))
    used |= set(
        re.findall(
            r'"(\w+(?:Edit|Button|Label|CheckBox|Radio))"',
            (MODULE_DIR / f"{MODULE_NAME}.py").read_text(encoding="utf-8"),
        )
    )
    assert used and not used - names, f"missing in the .ui: {sorted(used - names)}"
    parameters = {
        prop.find("string").text for prop in tree.iter("property") if prop.get("name") == "SlicerParameterName"
    }
    declared = set(
        re.findall(r"^    (\w+): ", (MODULE_DIR / f"{MODULE_NAME}.py").read_text(encoding="utf-8"), flags=re.MULTILINE)
    )
    assert parameters and parameters <= declared


def test_module_files_compile(tmp_path):
    for name in _module_files():
        if name.endswith(".py"):
            py_compile.compile(str(MODULE_DIR / name), cfile=str(tmp_path / "compiled.pyc"), doraise=True)


def test_library_imports_nothing_from_the_gui():
    for path in (MODULE_DIR / f"{MODULE_NAME}Lib").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(import|from)\s+(qt|ctk|slicer\.app|slicer\.util)\b", text, flags=re.MULTILINE), path


def test_extension_ships_the_backend_source_the_installer_looks_for():
    """An installed extension carries the backend's source where ``find_backend_source`` looks, with every package
    folder that pyproject.toml builds from, so that embedded mode installs without any package index."""
    from OrganDETRSlicerLib.dependency_installer import SHIPPED_SOURCE_FOLDER

    cmake = (MODULE_DIR.parent / "CMakeLists.txt").read_text(encoding="utf-8")
    destination = re.search(r"set\(BACKEND_SOURCE_DESTINATION \S+/(\w+)\)", cmake)
    assert destination and destination.group(1) == SHIPPED_SOURCE_FOLDER
    installed = set(re.findall(r"install\(DIRECTORY ([^$]+?) DESTINATION", cmake))
    installed = {item for rule in installed for item in rule.split()}
    pyproject = (MODULE_DIR.parent / "pyproject.toml").read_text(encoding="utf-8")
    where_line = re.search(r"^where = \[(.*)\]$", pyproject, flags=re.MULTILINE)
    assert where_line
    for where in re.findall(r'"([^"]+)"', where_line.group(1)):
        folder = MODULE_DIR.parent / where
        packages = [
            p.name for p in folder.iterdir() if p.name.startswith("organdetr") and (p / "__init__.py").is_file()
        ]
        assert all(where in installed or f"{where}/{package}" in installed for package in packages), where
    assert re.search(r"install\(FILES pyproject\.toml", cmake)
