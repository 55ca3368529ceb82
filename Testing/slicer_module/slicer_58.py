"""Slicer 5.8.0's own Python (slicer.util and parameterNodeWrapper from Testing/slicer_reference) on top of
slicer-core's real MRML, with Qt stand-ins, so that the module's parameter class, widget and logic run as in a real
Slicer started with ``--no-main-window`` (no layout manager, no main window).

:func:`slicer_runtime` installs it into ``sys.modules`` and removes it again; everything it adds is listed here.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import qt_stand_ins
import slicer

REFERENCE = Path(__file__).resolve().parents[1] / "slicer_reference" / "v5.8.0"
MODULE_DIR = Path(__file__).resolve().parents[2] / "OrganDETRSlicer"
SLICER_APP_API = frozenset(json.loads((REFERENCE / "slicer_app_api.json").read_text(encoding="utf-8"))["names"])


class _Environment:
    def __init__(self, variables: dict[str, str]) -> None:
        self._variables = variables

    def keys(self) -> list[str]:
        return list(self._variables)

    def value(self, name: str) -> str:
        return self._variables[name]


@dataclass
class SlicerApp:
    """``slicer.app`` under ``--no-main-window``; every method it offers is one that Slicer 5.8's app has or one of
    QApplication's (checked by the tests)."""

    startup_environment: dict[str, str] = field(default_factory=lambda: {"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    calls: list[str] = field(default_factory=list)

    def layoutManager(self):
        self.calls.append("layoutManager")
        return None

    def startupEnvironment(self) -> _Environment:
        self.calls.append("startupEnvironment")
        return _Environment(self.startup_environment)

    def testingEnabled(self) -> bool:
        self.calls.append("testingEnabled")
        return True

    def setOverrideCursor(self, _cursor) -> None:  # QApplication's
        self.calls.append("setOverrideCursor")

    def restoreOverrideCursor(self) -> None:  # QApplication's
        self.calls.append("restoreOverrideCursor")


# Methods slicer.app has that the two headers do not declare: QApplication's, and testingEnabled (Slicer's Python
# wrapping; Slicer 5.8's own util.tryWithErrorDisplay calls it).
METHODS_BEYOND_HEADERS = frozenset({"processEvents", "setOverrideCursor", "restoreOverrideCursor", "testingEnabled"})


def _scripted_loadable_module_stand_in(scene) -> types.ModuleType:
    """slicer.ScriptedLoadableModule: the base classes as the module uses them."""
    module = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent) -> None:
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None) -> None:
            self.parent = parent if parent is not None else qt_stand_ins.QWidget()
            self.parent.isEntered = False
            self.moduleName = type(self).__name__[: -len("Widget")]

        def setup(self) -> None:
            self.layout = qt_stand_ins.QVBoxLayout(self.parent)

        def resourcePath(self, filename: str) -> str:
            return str(MODULE_DIR / "Resources" / filename)

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None) -> None:
            self.moduleName = type(self).__name__[: -len("Logic")]

        def getParameterNode(self):
            node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
                node.UnRegister(None)
                node.SetSingletonTag(self.moduleName)
                node.SetName(scene.GenerateUniqueName(self.moduleName))
                node.SetAttribute("ModuleName", self.moduleName)
                node = scene.AddNode(node)
            return node

    class ScriptedLoadableModuleTest:
        pass

    for cls in (
        ScriptedLoadableModule,
        ScriptedLoadableModuleWidget,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
    ):
        setattr(module, cls.__name__, cls)
    return module


def _load(name: str, path: Path, package_dir: Path | None = None) -> types.ModuleType:
    locations = [str(package_dir)] if package_dir is not None else None
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=locations)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class SlicerRuntime:
    app: SlicerApp
    util: types.ModuleType
    module: types.ModuleType  # OrganDETRSlicer.py, loaded against Slicer 5.8's code


@contextlib.contextmanager
def slicer_runtime(scene) -> Iterator[SlicerRuntime]:
    """Slicer 5.8's util and parameterNodeWrapper, the stand-ins, ``slicer.app`` and ``slicer.mrmlScene`` (the given
    real scene), and OrganDETRSlicer.py loaded against them; all removed afterwards."""
    saved_modules = {name: sys.modules.get(name) for name in ("qt", "ctk", "slicer.util", "OrganDETRSlicer")}
    added_attributes = ["app", "mrmlScene", "util", "parameterNodeWrapper", "ScriptedLoadableModule"]
    added_attributes += list(qt_stand_ins.SLICER_WIDGET_CLASSES)
    saved_attributes = {name: getattr(slicer, name) for name in added_attributes if hasattr(slicer, name)}
    try:
        sys.modules["qt"] = qt_stand_ins.qt_module()
        sys.modules["ctk"] = qt_stand_ins.ctk_module()
        for name, cls in qt_stand_ins.SLICER_WIDGET_CLASSES.items():
            setattr(slicer, name, cls)
        app = SlicerApp()
        slicer.app, slicer.mrmlScene = app, scene
        slicer.util = _load("slicer.util", REFERENCE / "slicer" / "util.py")
        package = REFERENCE / "slicer" / "parameterNodeWrapper"
        slicer.parameterNodeWrapper = _load("slicer.parameterNodeWrapper", package / "__init__.py", package)
        slicer.ScriptedLoadableModule = sys.modules["slicer.ScriptedLoadableModule"] = (
            _scripted_loadable_module_stand_in(scene)
        )
        module = _load("OrganDETRSlicer", MODULE_DIR / "OrganDETRSlicer.py")
        yield SlicerRuntime(app, slicer.util, module)
    finally:
        for name in [name for name in sys.modules if name.startswith("slicer.parameterNodeWrapper")]:
            del sys.modules[name]
        sys.modules.pop("slicer.ScriptedLoadableModule", None)
        for name, module in saved_modules.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for name in added_attributes:
            if name in saved_attributes:
                setattr(slicer, name, saved_attributes[name])
            elif hasattr(slicer, name):
                delattr(slicer, name)
