"""The module's parameter class, widget and logic against Slicer 5.8.0's OWN slicer.util and parameterNodeWrapper
(Testing/slicer_reference), real MRML (slicer-core) and Qt stand-ins, as Slicer runs them with --no-main-window.

These fail on what fails in a real Slicer before a user can click anything: connectors that refuse the parameter
class, pip arguments Slicer does not expect, window-wide shortcuts, a missing layout manager, a parameter node that
is gone during scene close, observers that survive cleanup, calls that Slicer 5.8 does not have.
"""

from __future__ import annotations

import ast

import pytest
import slicer
from conftest import MODULE_DIR, OPENKBP_CLASSES, label_derived_result
from OrganDETRSlicerLib.dependency_installer import InstallPlan, execute_plan, plan_installation
from OrganDETRSlicerLib.roi_nodes import create_rois
from qt_stand_ins import QWidget
from slicer_58 import METHODS_BEYOND_HEADERS, SLICER_APP_API, SlicerApp, slicer_runtime


@pytest.fixture
def runtime(mrml):
    with slicer_runtime(mrml.scene) as loaded:
        yield loaded


@pytest.fixture
def widget(runtime):
    panel = runtime.module.OrganDETRSlicerWidget()
    panel.setup()
    yield panel
    panel.cleanup()


def _bound_ui(runtime):
    ui_root = runtime.util.loadUI(str(MODULE_DIR / "Resources" / "UI" / "OrganDETRSlicer.ui"))
    return runtime.util.childWidgetVariables(ui_root)


def test_parameter_class_connects_to_the_ui_widgets(runtime, mrml):
    ui = _bound_ui(runtime)
    logic = runtime.module.OrganDETRSlicerLogic()
    parameters = logic.getParameterNode()
    tag = parameters.connectGui(ui)  # Slicer's connectors raise here for an unannotated str combo or float slider

    assert ui.deviceSelector.items == ["Auto", "GPU", "CPU"]
    ui.deviceSelector.currentIndex = 2
    assert parameters.device == "CPU"
    parameters.scoreThreshold = 0.55
    assert ui.scoreThresholdSlider.value == 0.55
    assert (ui.scoreThresholdSlider.minimum, ui.scoreThresholdSlider.maximum) == (0.0, 1.0)
    ui.modelFolderEdit.text = "/data/checkpoints/my model"  # any folder, not one of a fixed list
    assert parameters.modelFolder == "/data/checkpoints/my model"
    ui.includeAbsentCheckBox.checked = True
    assert parameters.includeAbsent
    volume = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    ui.inputVolumeSelector.setCurrentNode(volume)
    assert parameters.inputVolume is volume
    with pytest.raises(ValueError):
        parameters.device = "TPU"  # Slicer's Choice validator
    parameters.disconnectGui(tag)
    logic.shutdown()


def test_widget_sets_up_without_main_window_and_binds_every_parameter(widget, runtime, mrml):
    assert "layoutManager" in runtime.app.calls  # asked, got None (--no-main-window), fell back to the scene
    assert widget._parameterNodeGuiTag is not None
    bound = {
        child.property("SlicerParameterName")
        for child in vars(widget.ui).values()
        if child.property("SlicerParameterName")
    }
    assert bound == set(runtime.module.OrganDETRSlicerParameterNode.allParameters)
    widget.ui.lockBoxesCheckBox.checked = True
    assert widget._parameterNode.lockBoxes

    widget.exit()  # disconnects (Slicer 5.8's connectGui returns no tag: the module must still find it)
    widget.ui.lockBoxesCheckBox.checked = False
    assert widget._parameterNode.lockBoxes
    widget.enter()  # reconnects once: the GUI shows the parameter and writes it again
    assert widget.ui.lockBoxesCheckBox.checked
    widget.ui.lockBoxesCheckBox.checked = False
    assert not widget._parameterNode.lockBoxes
    assert len(widget._parameterNode._parameterGUIs) == 1  # no connection piles up over exit/enter


def test_shortcuts_act_only_in_the_shown_panel(widget):
    inside, table = widget.ui.applyButton, widget.ui.resultsTable
    elsewhere = QWidget()  # e.g. the Segment Editor's panel or a slice view
    by_keys = {shortcut.key.keys: shortcut for shortcut in widget._shortcuts}
    assert set(by_keys) == {"Ctrl+Shift+D", "Ctrl+Shift+B", "Ctrl+Z", "Delete"}
    assert not any(shortcut.fires_for(inside) for shortcut in widget._shortcuts)  # module not shown yet

    widget.enter()
    assert all(by_keys[keys].fires_for(inside) for keys in ("Ctrl+Shift+D", "Ctrl+Shift+B", "Ctrl+Z"))
    assert not any(shortcut.fires_for(elsewhere) for shortcut in widget._shortcuts)
    assert by_keys["Delete"].fires_for(table) and not by_keys["Delete"].fires_for(inside)

    widget.exit()
    assert not any(shortcut.fires_for(inside) for shortcut in widget._shortcuts)


def test_scene_close_and_cleanup_leave_nothing_behind(runtime, mrml, head_neck_case):
    panel = runtime.module.OrganDETRSlicerWidget()
    panel.setup()
    volume = mrml.load_volume(head_neck_case[0])
    rois = create_rois(mrml.scene, volume, label_derived_result(*head_neck_case, OPENKBP_CLASSES))
    panel._parameterNode.inputVolume = volume
    panel.logic.session.track_edits(volume, panel.refreshTable)
    end = slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent
    assert all(roi.HasObserver(end) for roi in rois)
    assert panel.ui.resultsTable.rowCount == len(OPENKBP_CLASSES)

    mrml.scene.InvokeEvent(mrml.scene.StartCloseEvent)  # the parameter node is gone until EndCloseEvent
    assert panel._parameterNode is None
    panel.refreshTable()
    panel.onVolumeChanged(None)
    panel.onThresholdChanged(0.5)
    assert panel.ui.resultsTable.rowCount == 0

    panel.cleanup()  # module reload: no observer of the old widget may survive
    assert not any(roi.HasObserver(end) for roi in rois)
    assert not panel.Observations and not panel._shortcuts and not panel._timer.active


def test_pip_install_gets_requirements_only(runtime, monkeypatch):
    """Slicer's pip_install prepends "install" itself; the plan's arguments must not."""
    commands = []
    monkeypatch.setattr(runtime.util, "_executePythonModule", lambda module, args: commands.append((module, args)))
    plan = plan_installation({"pydantic": None}, embedded=False)
    execute_plan(plan, install_torch=lambda: None, run_pip=runtime.util.pip_install, installed=dict)
    (module, arguments), *_ = commands
    assert module == "pip" and arguments[0] == "install" and arguments.count("install") == 1
    assert arguments[-1].startswith("pydantic") and "--constraint" in arguments

    execute_plan(InstallPlan(), lambda: None, runtime.util.pip_install)
    assert len(commands) == 1


def test_removal_uses_slicers_uninstall_arguments(runtime, monkeypatch):
    commands = []
    monkeypatch.setattr(runtime.util, "_executePythonModule", lambda module, args: commands.append(args))
    runtime.module.OrganDETRSlicerLogic().removeBackendPackage()
    assert commands == [("uninstall", "organdetr", "--yes")]


def test_other_python_gets_slicers_startup_environment(runtime):
    choice = runtime.module.OrganDETRSlicerLogic.backendChoice(
        remote=False, url="", token="", consent=False, python="/opt/env/bin/python", modelFolder="", device="cpu"
    )
    assert dict(choice.embedded.environment) == SlicerApp().startup_environment
    own = runtime.module.OrganDETRSlicerLogic.backendChoice(False, "", "", False, "", "", "auto")
    assert own.embedded.environment is None


def test_export_name_typed_without_extension_gets_the_filters_ending(runtime):
    export_path = runtime.module.OrganDETRSlicerLogic.exportPath
    assert export_path("/tmp/boxes", "CSV (*.csv)") == "/tmp/boxes.csv"
    assert export_path("/tmp/boxes", "Slicer markups (*.mrk.json)") == "/tmp/boxes.mrk.json"
    assert export_path("/tmp/boxes.mrk.json", "OrganDETR JSON (*.json)") == "/tmp/boxes.mrk.json"


def _called_attributes(tree: ast.AST, prefix: str) -> set[str]:
    """Names NAME used as ``<prefix>.NAME`` (e.g. prefix "slicer.util")."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) == prefix:
            names.add(node.attr)
    return names


def test_module_uses_only_what_slicer_58_has(runtime):
    tree = ast.parse((MODULE_DIR / "OrganDETRSlicer.py").read_text(encoding="utf-8"))
    util_names = _called_attributes(tree, "slicer.util")
    assert util_names and util_names <= set(dir(runtime.util)), util_names - set(dir(runtime.util))
    app_names = _called_attributes(tree, "slicer.app")
    assert app_names and app_names <= SLICER_APP_API
    # The stand-in app offers only what Slicer 5.8's application (or QApplication) has.
    offered = {name for name in vars(SlicerApp) if not name.startswith("_")} - {"calls", "startup_environment"}
    assert offered <= SLICER_APP_API | METHODS_BEYOND_HEADERS
