"""Run by test_python39.py with a Python 3.9 (Slicer 5.8's Python) that has only the torch-free client installed
(prepare_py39_venv.sh): what Slicer's Python does with the module's files on loading them, and a client round trip.

1. imports every organdetr_client module and writes, reads and converts a detection result with it;
2. imports every OrganDETRSlicerLib module, with stand-ins for ``slicer`` and ``vtk`` (slicer-core has no Python 3.9
   build): module and class bodies, decorators, dataclasses and default values run as in Slicer;
   and calls the few library functions that need neither;
3. loads OrganDETRSlicer.py with stand-ins for ``qt`` and Slicer's Python packages, and evaluates its parameter
   class's annotations as Slicer's parameterNodeWrapper does (typing.get_type_hints with include_extras).

Prints one JSON line (what was imported and checked); a failure is a traceback and a non-zero exit.
Usage: python py39_check.py OrganDETRSlicer_folder
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import tempfile
import types
import typing
from pathlib import Path


class _Anything(types.ModuleType):
    """A module whose every attribute is a new class (so that it can also serve as a base class or annotation)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        value = type(name, (), {})
        setattr(self, name, value)
        return value


def _client_round_trip(folder: Path) -> list[str]:
    import numpy as np
    from organdetr_client.box_geometry import physical_box_to_voxel_bounds, voxel_bounds_to_physical
    from organdetr_client.export import read_result_json, write_csv, write_markups, write_result_json
    from organdetr_client.organ_terminology import organ_term
    from organdetr_client.schema import Detection, DetectionResult, ImageInfo, ModelInfo, VoxelBounds

    class Grid:
        def GetSize(self):
            return (40, 30, 20)

        def GetSpacing(self):
            return (1.5, 1.5, 3.0)

        def GetOrigin(self):
            return (-30.0, -20.0, 10.0)

        def GetDirection(self):
            return (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    grid = Grid()
    bounds = VoxelBounds(min_ijk=(2, 3, 4), max_ijk_inclusive=(10, 12, 8))
    box = voxel_bounds_to_physical(bounds, grid)
    assert physical_box_to_voxel_bounds(box, grid) == bounds
    result = DetectionResult(
        image=ImageInfo(
            source="ct.nrrd",
            shape=grid.GetSize(),
            spacing=grid.GetSpacing(),
            origin=grid.GetOrigin(),
            direction=list(grid.GetDirection()),
            sha256="0" * 64,
        ),
        model=ModelInfo(name="py39", version="0", weights_sha256="0" * 64, classes=["Liver"]),
        device="cpu",
        detections=[Detection(label="Liver", class_id=1, score=0.9, box=box, voxel_bounds=bounds)],
    )
    assert read_result_json(write_result_json(result, folder / "result.json")) == result
    assert "Liver" in write_csv(result, folder / "boxes.csv").read_text(encoding="utf-8")
    markups = json.loads(write_markups(result, folder / "boxes.mrk.json").read_text(encoding="utf-8"))
    assert markups["markups"][0]["type"] == "ROI"
    assert np.allclose(box.size, (13.5, 15.0, 15.0))
    assert organ_term("Liver") is not None
    return ["voxel bounds <-> box", "result JSON written and read", "CSV", "markups", "terminology"]


def _slicer_stand_ins() -> None:
    """``qt``, ``vtk`` and Slicer's Python packages, as far as the module's files touch them while loading."""
    slicer = _Anything("slicer")
    slicer.__path__ = []
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic"):
        setattr(scripted, name, type(name, (), {"__init__": lambda self, *args: None}))
    scripted.ScriptedLoadableModuleTest = type("ScriptedLoadableModuleTest", (), {})
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    wrapper.Choice = lambda choices: ("Choice", tuple(choices))
    wrapper.WithinRange = lambda low, high: ("WithinRange", low, high)
    util = types.ModuleType("slicer.util")
    util.VTKObservationMixin = type("VTKObservationMixin", (), {"__init__": lambda self: None})
    slicer.ScriptedLoadableModule, slicer.parameterNodeWrapper, slicer.util = scripted, wrapper, util
    sys.modules.update(
        {
            "slicer": slicer,
            "slicer.ScriptedLoadableModule": scripted,
            "slicer.parameterNodeWrapper": wrapper,
            "slicer.util": util,
            "vtk": _Anything("vtk"),
            "vtk.util": _Anything("vtk.util"),
            "vtk.util.numpy_support": _Anything("vtk.util.numpy_support"),
            "qt": _Anything("qt"),
            "ctk": _Anything("ctk"),
        }
    )


def main(module_dir: Path) -> dict:
    sys.path.insert(0, str(module_dir))
    report: dict = {"python": ".".join(map(str, sys.version_info[:3]))}
    client = sorted(path.stem for path in (module_dir / "organdetr_client").glob("*.py"))
    for name in client:
        importlib.import_module("organdetr_client" if name == "__init__" else f"organdetr_client.{name}")
    report["client_modules"] = client
    assert "torch" not in sys.modules
    with tempfile.TemporaryDirectory() as folder:
        report["client_round_trip"] = _client_round_trip(Path(folder))

    _slicer_stand_ins()
    library = sorted(path.stem for path in (module_dir / "OrganDETRSlicerLib").glob("*.py"))
    for name in library:
        importlib.import_module("OrganDETRSlicerLib" if name == "__init__" else f"OrganDETRSlicerLib.{name}")
    report["library_modules"] = library
    from organdetr_client.http_client import DetectionRequest
    from OrganDETRSlicerLib.dependency_installer import installed_versions, plan_installation, removal_requirements

    plan = plan_installation(installed_versions(), embedded=False)
    assert plan.summary() and removal_requirements()
    assert DetectionRequest(segmentation=True, include_absent=False).form_fields()
    report["library_calls"] = ["plan_installation", "removal_requirements", "DetectionRequest.form_fields"]

    spec = importlib.util.spec_from_file_location("OrganDETRSlicer", module_dir / "OrganDETRSlicer.py")
    module = sys.modules["OrganDETRSlicer"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    hints = typing.get_type_hints(module.OrganDETRSlicerParameterNode, include_extras=True)
    report["parameters"] = sorted(hints)
    for cls in (module.OrganDETRSlicerWidget, module.OrganDETRSlicerLogic, module.OrganDETRSlicerTest):
        for function in vars(cls).values():
            if isinstance(function, (staticmethod, types.FunctionType)):
                typing.get_type_hints(getattr(function, "__func__", function))
    report["module_classes"] = sorted(name for name in vars(module) if name.startswith("OrganDETRSlicer"))
    return report


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
