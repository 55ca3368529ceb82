"""Every Qt, CTK and Slicer widget class, member, property, signal and slot that the module's Python and its .ui use
exists in Slicer 5.8.0 as PythonQt offers it (Testing/slicer_reference/v5.8.0/toolkit_api.json: Qt 5.15 headers and
PythonQt's wrappers at the commit CTK pins, CTK at the commit Slicer pins, Slicer's own headers), and the check finds
what is missing: a misspelt method, a CTK method that is not a slot (CTK is wrapped "light"), a property called as a
method, an assignment to something that is not a writable property, a signal signature the class does not have.

The Qt stand-ins that the runtime tests (test_module_in_slicer_58.py) give Slicer's own code offer nothing more than
the real classes either, apart from the test helpers named here.
"""

from __future__ import annotations

import re
import textwrap

import pytest
import qt_stand_ins
from conftest import MODULE_DIR
from toolkit_usage import ToolkitApi, normalized_signature, problems, python_uses, ui_uses

UI = MODULE_DIR / "Resources" / "UI" / "OrganDETRSlicer.ui"
API = ToolkitApi.load()


def _module_uses():
    files = [MODULE_DIR / "OrganDETRSlicer.py", *sorted((MODULE_DIR / "OrganDETRSlicerLib").glob("*.py"))]
    uses = [use for path in files for use in python_uses(path.read_text(encoding="utf-8"), path.name, UI)]
    return uses + ui_uses(UI)


def test_module_uses_only_toolkit_api_of_slicer_58():
    uses = _module_uses()
    assert problems(uses, API) == []
    seen = {(use.cls, use.kind, use.name) for use in uses}
    # The collector follows the module's ways of reaching Qt objects (a sample of each):
    assert {
        ("QTimer", "construct", ""),  # qt.QTimer()
        ("QTimer", "call", "setInterval"),  # self._timer = qt.QTimer(); self._timer.setInterval(...)
        ("QTimer", "connect", "timeout()"),
        ("QShortcut", "call", "setEnabled"),  # for shortcut in self._shortcuts (appended from self._shortcut(...))
        ("Qt", "attribute", "WidgetWithChildrenShortcut"),
        ("QFileDialog", "attribute", "getOpenFileName"),
        ("QFileDialog", "call", "exec_"),
        ("QLayout", "call", "addWidget"),  # self.layout
        ("qMRMLWidget", "call", "setMRMLScene"),  # slicer.util.loadUI(...)
        ("QLabel", "call", "setEnabled"),  # getattr(self.ui, name) over a tuple of names
        ("QTableWidget", "call", "setItem"),  # table = self.ui.resultsTable
        ("QLineEdit", "attribute", "text"),
        ("QPushButton", "store", "enabled"),
        ("ctkSliderWidget", "connect", "valueChanged(double)"),
        ("qMRMLNodeComboBox", "connect", "currentNodeChanged(vtkMRMLNode*)"),
        ("qSlicerScriptedLoadableModule", "store", "helpText"),  # self.parent in the module class
        ("qSlicerScriptedLoadableModuleWidget", "attribute", "isEntered"),  # self.parent in the widget class
        ("QComboBox", "store", "currentText"),  # widget.ui... in the module's own Slicer test
        ("ctkCollapsibleButton", "store", "collapsed"),  # a property the .ui sets
        ("qMRMLNodeComboBox", "slot", "setMRMLScene(vtkMRMLScene*)"),  # the .ui's connection
    } <= seen


def test_reference_is_complete_and_says_where_it_comes_from():
    sources = API.document["sources"]
    assert sources["slicer"]["commit"] == "d20ee94ceeaf3da1d67042059c6c125c82626005"  # tag v5.8.0, as README.md
    for name in ("slicer", "ctk", "pythonqt"):
        assert re.fullmatch(r"[0-9a-f]{40}", sources[name]["commit"]), name
    assert sources["qt"]["version"].startswith("5.15.")
    for name, entry in API.classes.items():
        assert all(base in API.classes for base in entry["bases"]), name
    assert API.lineage("QPushButton")[-2:] == ["QObject", "QPaintDevice"]
    assert API.lineage("qSlicerScriptedLoadableModuleWidget")[:2] == [
        "qSlicerScriptedLoadableModuleWidget",
        "qSlicerAbstractModuleWidget",
    ]


def _widget_source(body: str) -> str:
    return (
        "import ctk\nimport qt\nimport slicer\nfrom slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget"
        "\n\n\nclass SomeWidget(ScriptedLoadableModuleWidget):\n    def setup(self):\n"
        + textwrap.indent(textwrap.dedent(body).strip(), " " * 8)
        + "\n"
    )


def _problems(body: str) -> list[str]:
    return problems(python_uses(_widget_source(body), "snippet.py", UI), API)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("qt.QTimer.singleShotX(0, self.setup)", "QTimer has no singleShotX"),
        ("ctk.ctkPathLineEdit().nonExisting", "ctkPathLineEdit has no nonExisting"),
        # a public C++ method, but not a slot: CTK classes are wrapped "light", Python cannot call it
        ("edit = ctk.ctkPathLineEdit()\nedit.setNameFilters(['*.json'])", "ctkPathLineEdit has no setNameFilters"),
        ("edit = ctk.ctkPathLineEdit()\nedit.currentPath()", "ctkPathLineEdit.currentPath is a property"),
        ("self.ui.resultsTable.rowCount()", "QTableWidget.rowCount is a property"),
        ("self.ui.applyButton.setEnabledX(True)", "QPushButton has no setEnabledX"),
        ("self.ui.applyButton.txt = 'Detect'", "QPushButton has no property txt"),
        ("self.parent.isEntered = True", "qSlicerScriptedLoadableModuleWidget.isEntered is read-only"),
        ("self.ui.progressBar.connect('valueChanged(double)', self.setup)", "no signal valueChanged(double)"),
        ("self.ui.applyButton.clickd.connect(self.setup)", "QPushButton has no signal clickd"),
        ("qt.QNoSuchWidget()", "QNoSuchWidget is not in the reference"),
        ("qt.QFileDialog.AcceptSaveX", "QFileDialog has no AcceptSaveX"),
        ("timer = qt.QTimer()\ntimer.begin()", "QTimer has no begin"),
        (
            "self._timers = []\nself._timers.append(qt.QTimer())\nfor timer in self._timers:\n    timer.begin()",
            "QTimer has no begin",
        ),
        (
            "for name in ('applyButton', 'statusLabel'):\n    getattr(self.ui, name).setEnabledX(False)",
            "QLabel has no setEnabledX",
        ),
        ("self.layout.addWidgetX(None)", "QLayout has no addWidgetX"),
        ("ui = slicer.util.loadUI('x.ui')\nui.setMRMLSceneX(None)", "qMRMLWidget has no setMRMLSceneX"),
    ],
)
def test_check_finds_what_slicer_58_lacks(body, message):
    found = _problems(body)
    assert any(message in problem for problem in found), found


@pytest.mark.parametrize(
    "body",
    [
        "qt.QTimer.singleShot(0, self.setup)",  # PythonQt's static decorator (the singleShot property is hidden)
        "ctk.ctkPathLineEdit().currentPath",
        "edit = ctk.ctkPathLineEdit()\nedit.currentPath = '/tmp'\nedit.setCurrentPath('/tmp')\n"
        "edit.connect('currentPathChanged(const QString &)', self.setup)",
        "dialog = qt.QFileDialog()\ndialog.exec_()\ndialog.exec()\ndialog.className()",
        "self.ui.applyButton.clicked.connect(self.setup)\nself.ui.applyButton.name",
        "self.ui.resultsTable.setRowCount(self.ui.resultsTable.rowCount + 1)",
        "self.parent.isEntered",
    ],
)
def test_check_accepts_what_slicer_58_has(body):
    assert _problems(body) == []


def test_ui_check_finds_unknown_classes_properties_and_connections(tmp_path):
    text = UI.read_text(encoding="utf-8")
    broken = text.replace('<property name="collapsed">', '<property name="collapsedd">', 1)
    broken = broken.replace("<slot>setMRMLScene(vtkMRMLScene*)</slot>", "<slot>setMRMLScene(vtkMRMLNode*)</slot>")
    broken = broken.replace('class="QProgressBar"', 'class="QProgressBarX"')
    path = tmp_path / "broken.ui"
    path.write_text(broken, encoding="utf-8")
    found = "\n".join(problems(ui_uses(path), API))
    assert "ctkCollapsibleButton has no property collapsedd" in found
    assert "qMRMLNodeComboBox has no slot setMRMLScene(vtkMRMLNode*)" in found
    assert "QProgressBarX is not in the reference" in found


def test_signatures_are_normalized_as_qt_does():
    assert normalized_signature("currentPathChanged(const QString &)") == "currentPathChanged(QString)"
    assert normalized_signature("cellClicked(int, int)") == "cellClicked(int,int)"
    assert normalized_signature("currentNodeChanged(vtkMRMLNode *)") == "currentNodeChanged(vtkMRMLNode*)"
    assert normalized_signature("timeout()") == "timeout()"


# Attributes of the stand-ins that real Qt lacks: what the tests read to see the outcome.
STAND_IN_HELPERS = {
    "QShortcut": {"fires_for"},  # whether Qt would deliver the key to the shortcut
    "QComboBox": {"items"},
    "QTableWidget": {"cells"},
    "QKeySequence": {"keys"},
    "qMRMLNodeComboBox": {"scene"},
    "QFile": {"path"},
}
NOT_IN_REFERENCE = {"QUiLoader"}  # used by Slicer's own loadUI, not by the module


def _stand_in_instance(cls):
    if cls is qt_stand_ins.QKeySequence:
        return cls("Ctrl+A")
    if cls is qt_stand_ins.QShortcut:
        return cls(qt_stand_ins.QKeySequence("Ctrl+A"))
    if cls is qt_stand_ins.QFile:
        return cls("x.ui")
    return cls() if cls is not qt_stand_ins.Qt else None


def test_stand_ins_offer_only_what_slicer_58_has():
    stand_ins = {**vars(qt_stand_ins.qt_module()), **vars(qt_stand_ins.ctk_module())}
    stand_ins |= qt_stand_ins.SLICER_WIDGET_CLASSES
    checked, found = 0, []
    for name, cls in stand_ins.items():
        if not isinstance(cls, type) or issubclass(cls, qt_stand_ins._Unused) or name in NOT_IN_REFERENCE:
            continue
        assert name in API.classes, name
        helpers = {helper for base in cls.__mro__ for helper in STAND_IN_HELPERS.get(base.__name__, ())}
        offered = {member for base in cls.__mro__[:-1] for member in vars(base) if not member.startswith("_")}
        instance = _stand_in_instance(cls)
        offered |= {member for member in vars(instance or cls) if not member.startswith("_")}
        offered -= helpers | {"SIGNALS"}
        found += [f"{name}.{member}" for member in sorted(offered) if not API.has_attribute(name, member)]
        signal_names = {signature.split("(")[0] for signature in API.signals(name)}
        found += [f"{name}.{signal} (signal)" for signal in getattr(cls, "SIGNALS", ()) if signal not in signal_names]
        checked += 1
    assert checked >= 15
    assert found == []
