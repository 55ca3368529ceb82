"""The smallest stand-ins for the Qt, CTK and Slicer widget classes that Slicer's parameterNodeWrapper and
slicer.util inspect and the module's widget calls, so that Slicer 5.8's own Python code runs here without Qt.

They behave like PythonQt objects where that code looks: exact classes (the connectors test ``type(widget)``),
dynamic properties, ``findChildren``/``children``, signals with ``connect``/``disconnect`` and PythonQt's
``widget.connect("signal(args)", slot)``, and properties as attributes. Widgets are built from the module's .ui file
by the stand-in ``QUiLoader``, so what the tests bind is what Slicer would load.
"""

from __future__ import annotations

import inspect
import types
import xml.etree.ElementTree as ElementTree


class Signal:
    def __init__(self) -> None:
        self._slots: list = []

    def connect(self, slot) -> None:
        self._slots.append(slot)

    def disconnect(self, slot) -> None:
        self._slots.remove(slot)

    def emit(self, *args) -> None:
        """Call each slot with as many of the signal's arguments as it takes, as PythonQt does."""
        for slot in list(self._slots):
            slot(*args[: _accepted_arguments(slot, len(args))])


def _accepted_arguments(slot, available: int) -> int:
    parameters = inspect.signature(slot).parameters.values()
    if any(parameter.kind is parameter.VAR_POSITIONAL for parameter in parameters):
        return available
    return min(available, sum(parameter.default is parameter.empty for parameter in parameters) or len(parameters))


class QObject:
    SIGNALS: tuple[str, ...] = ()

    def __init__(self, parent=None) -> None:
        self._properties: dict[str, object] = {}
        self._children: list = []
        self._parent = None
        for signal in self.SIGNALS:
            setattr(self, signal, Signal())
        self.setParent(parent)

    def setParent(self, parent) -> None:
        if self._parent is not None:
            self._parent._children.remove(self)
        self._parent = parent
        if parent is not None:
            parent._children.append(self)

    def parent(self):
        return self._parent

    def children(self) -> list:
        return list(self._children)

    def findChildren(self, kind) -> list:
        found = []
        for child in self._children:
            if isinstance(child, kind):
                found.append(child)
            found += child.findChildren(kind)
        return found

    def property(self, name: str):
        return self._properties.get(name)

    def setProperty(self, name: str, value) -> None:
        self._properties[name] = value

    def connect(self, signature: str, slot) -> None:
        """PythonQt's string form: ``widget.connect("clicked(bool)", slot)``."""
        getattr(self, signature.split("(")[0]).connect(slot)


class QWidget(QObject):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.enabled = True
        self.name = ""

    def isWidgetType(self) -> bool:
        return True

    def setEnabled(self, enabled: bool) -> None:
        self.enabled = enabled


class QLabel(QWidget):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.text = ""


class QAbstractButton(QWidget):
    SIGNALS: tuple[str, ...] = ("clicked", "toggled")

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.text = ""
        self._checked = False

    @property
    def checked(self) -> bool:
        return self._checked

    @checked.setter
    def checked(self, value: bool) -> None:
        if value != self._checked:
            self._checked = value
            self.toggled.emit(value)
            if "stateChanged" in self.SIGNALS:
                self.stateChanged.emit(2 if value else 0)


class QPushButton(QAbstractButton):
    pass


class QCheckBox(QAbstractButton):
    SIGNALS = ("clicked", "toggled", "stateChanged")  # stateChanged is QCheckBox's, not every button's


class QRadioButton(QAbstractButton):
    pass


class QLineEdit(QWidget):
    SIGNALS = ("textChanged",)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._text = ""

    @property
    def text(self) -> str:
        return self._text

    @text.setter
    def text(self, value: str) -> None:
        if value != self._text:
            self._text = value
            self.textChanged.emit(value)


class QComboBox(QWidget):
    SIGNALS = ("currentIndexChanged",)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.items: list[str] = []
        self._index = -1

    def clear(self) -> None:
        self.items = []
        self.currentIndex = -1

    def addItem(self, text: str) -> None:
        self.items.append(text)
        if self._index < 0:
            self.currentIndex = 0

    def addItems(self, texts) -> None:
        for text in texts:
            self.addItem(text)

    @property
    def currentIndex(self) -> int:
        return self._index

    @currentIndex.setter
    def currentIndex(self, index: int) -> None:
        if index != self._index:
            self._index = index
            self.currentIndexChanged.emit(index)

    @property
    def currentText(self) -> str:
        return self.items[self._index] if self._index >= 0 else ""


class QProgressBar(QWidget):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.value = 0


class QTableWidgetItem:
    def __init__(self, text: str = "") -> None:
        self.text = text


class QTableWidget(QWidget):
    SIGNALS = ("cellClicked",)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.rowCount = 0
        self.cells: dict[tuple[int, int], QTableWidgetItem] = {}
        self._current_row = -1

    def setRowCount(self, rows: int) -> None:
        self.rowCount = rows
        self.cells = {key: item for key, item in self.cells.items() if key[0] < rows}

    def setItem(self, row: int, column: int, item: QTableWidgetItem) -> None:
        self.cells[(row, column)] = item

    def setCurrentCell(self, row: int, _column: int) -> None:
        self._current_row = row

    def currentRow(self) -> int:
        return self._current_row


class QVBoxLayout(QObject):
    def addWidget(self, widget) -> None:
        widget.setParent(self.parent())


class QTimer(QObject):
    SIGNALS = ("timeout",)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.active = False
        self.interval = 0

    def setInterval(self, milliseconds: int) -> None:
        self.interval = milliseconds

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False


class QKeySequence:
    def __init__(self, keys: str) -> None:
        self.keys = keys


class Qt:
    WidgetShortcut, WindowShortcut, ApplicationShortcut, WidgetWithChildrenShortcut = 0, 1, 2, 3
    WaitCursor = 16


class QShortcut(QObject):
    """A shortcut fires when enabled and the focus is where its context says (checked by :meth:`fires_for`)."""

    SIGNALS = ("activated",)

    def __init__(self, key: QKeySequence, parent=None) -> None:
        super().__init__(parent)
        self.key = key
        self.context = Qt.WindowShortcut
        self.enabled = True

    def setContext(self, context: int) -> None:
        self.context = context

    def setEnabled(self, enabled: bool) -> None:
        self.enabled = enabled

    def fires_for(self, focus_widget) -> bool:
        """Whether Qt would deliver the key to this shortcut with the keyboard focus on ``focus_widget``."""
        if not self.enabled:
            return False
        if self.context in (Qt.WindowShortcut, Qt.ApplicationShortcut):
            return True
        ancestor = focus_widget
        while ancestor is not None:
            if ancestor is self.parent():
                return self.context == Qt.WidgetWithChildrenShortcut or focus_widget is self.parent()
            ancestor = ancestor.parent()
        return False


class ctkCollapsibleButton(QWidget):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.text = ""
        self.collapsed = False


class ctkSliderWidget(QWidget):
    SIGNALS = ("valueChanged",)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.minimum, self.maximum, self.singleStep, self.decimals = 0.0, 99.0, 1.0, 2
        self._value = 0.0

    @property
    def value(self) -> float:
        return self._value

    @value.setter
    def value(self, value: float) -> None:
        value = min(max(float(value), self.minimum), self.maximum)
        if value != self._value:
            self._value = value
            self.valueChanged.emit(value)


class ctkCheckBox(QCheckBox):
    pass


class ctkComboBox(QComboBox):
    pass


class qMRMLWidget(QWidget):
    SIGNALS = ("mrmlSceneChanged",)

    def setMRMLScene(self, scene) -> None:
        self.mrmlSceneChanged.emit(scene)


class qMRMLNodeComboBox(QWidget):
    SIGNALS = ("currentNodeChanged",)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.nodeTypes: list[str] = []
        self._node = None
        self.scene = None

    def setMRMLScene(self, scene) -> None:
        self.scene = scene

    def currentNode(self):
        return self._node

    def setCurrentNode(self, node) -> None:
        if node is not self._node:
            self._node = node
            self.currentNodeChanged.emit(node)


class _Unused(QWidget):
    """Widget classes the connectors name but the module's .ui does not use."""


class QFile:
    ReadOnly = 1

    def __init__(self, path: str) -> None:
        self.path = str(path)

    def exists(self) -> bool:
        import os

        return os.path.isfile(self.path)

    def open(self, _mode) -> bool:
        return True


class QUiLoader:
    """Builds the stand-in widget tree of a .ui file: classes, object names, dynamic properties, combo items."""

    def load(self, qfile: QFile):
        root = ElementTree.parse(qfile.path).getroot().find("widget")
        widget = self._build(root, None)
        for connection in ElementTree.parse(qfile.path).getroot().iter("connection"):
            sender = widget if connection.findtext("sender") == widget.name else None
            receivers = [
                child for child in widget.findChildren(QWidget) if child.name == connection.findtext("receiver")
            ]
            if sender is not None and receivers:
                sender.connect(
                    connection.findtext("signal"), getattr(receivers[0], connection.findtext("slot").split("(")[0])
                )
        return widget

    def _build(self, element, parent):
        widget = WIDGET_CLASSES[element.get("class")](parent)
        widget.name = element.get("name")
        for prop in element.findall("property"):
            value = prop[0]
            text = value.text or ""
            converted = {"bool": text == "true", "double": float(text) if value.tag == "double" else None}.get(
                value.tag, text
            )
            if prop.get("stdset") == "0":
                widget.setProperty(prop.get("name"), converted)
            elif prop.get("name") in ("text", "checked", "value", "minimum", "maximum", "singleStep"):
                setattr(widget, prop.get("name"), converted)
        for item in element.findall("item"):
            widget.addItem(item.find("property").findtext("string"))
        for child in element.iter():
            if child is not element and child.tag == "widget" and _nearest_widget_ancestor(element, child) is element:
                self._build(child, widget)
        return widget


def _nearest_widget_ancestor(root, target):
    """The closest <widget> element above ``target`` (layouts and items in between do not count)."""
    parents = {child: parent for parent in root.iter() for child in parent}
    node = parents.get(target)
    while node is not None and node.tag != "widget":
        node = parents.get(node)
    return node


WIDGET_CLASSES = {
    cls.__name__: cls
    for cls in (
        QWidget,
        QLabel,
        QPushButton,
        QCheckBox,
        QRadioButton,
        QLineEdit,
        QComboBox,
        QProgressBar,
        QTableWidget,
        ctkCollapsibleButton,
        ctkSliderWidget,
        qMRMLWidget,
        qMRMLNodeComboBox,
    )
}


def qt_module() -> types.ModuleType:
    module = types.ModuleType("qt")
    for cls in (
        QObject,
        QWidget,
        QLabel,
        QPushButton,
        QCheckBox,
        QRadioButton,
        QLineEdit,
        QComboBox,
        QProgressBar,
        QTableWidget,
        QTableWidgetItem,
        QVBoxLayout,
        QTimer,
        QKeySequence,
        Qt,
        QShortcut,
        QFile,
        QUiLoader,
    ):
        setattr(module, cls.__name__, cls)
    for name in ("QSlider", "QSpinBox", "QDoubleSpinBox", "QTextEdit"):
        setattr(module, name, type(name, (_Unused,), {}))
    return module


def ctk_module() -> types.ModuleType:
    module = types.ModuleType("ctk")
    for cls in (ctkCollapsibleButton, ctkSliderWidget, ctkCheckBox, ctkComboBox):
        setattr(module, cls.__name__, cls)
    for name in (
        "ctkDoubleSlider",
        "ctkDoubleSpinBox",
        "ctkRangeWidget",
        "ctkDoubleRangeSlider",
        "ctkPathLineEdit",
        "ctkDirectoryButton",
    ):
        setattr(module, name, type(name, (_Unused,), {}))
    return module


SLICER_WIDGET_CLASSES = {
    "qMRMLNodeComboBox": qMRMLNodeComboBox,
    "qMRMLWidget": qMRMLWidget,
    **{
        name: type(name, (_Unused,), {})
        for name in ("qMRMLSliderWidget", "qMRMLSpinBox", "qMRMLRangeWidget", "qSlicerWidget")
    },
}
