"""What the module's Python code and .ui file use of Qt, CTK and Slicer's widget classes, found statically (``ast``
and the .ui XML), and the check of each use against what Slicer 5.8 offers through PythonQt
(Testing/slicer_reference/v5.8.0/toolkit_api.json, made by ../slicer_reference/extract_toolkit_api.py).

The class of an object is known where the code says it, which is how the module works with Qt:

- ``qt.X`` / ``ctk.X`` (the class; ``qt.X(...)`` an instance), ``slicer.util.loadUI(...)`` (the .ui's top widget);
- ``self.ui.name`` and ``getattr(self.ui, name)`` with ``name`` looping over string literals (the .ui's classes;
  also ``widget.ui.name`` where ``widget = ....widgetRepresentation().self()``, the module's widget in its test);
- ``self.parent`` and ``self.layout`` in ScriptedLoadableModule / ScriptedLoadableModuleWidget subclasses (what
  Slicer passes: qSlicerScriptedLoadableModule, qSlicerScriptedLoadableModuleWidget and its layout, a QLayout);
- names and ``self.`` attributes assigned such objects, methods returning them, lists they are appended to (and the
  loop variables over those lists).

Objects whose class cannot be told this way are not checked.
"""

from __future__ import annotations

import ast
import json
import re
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[1] / "slicer_reference" / "v5.8.0" / "toolkit_api.json"
TOOLKIT_MODULES = ("qt", "ctk")
SLICER_PARENTS = {  # what Slicer passes as ``parent`` and what ScriptedLoadableModuleWidget makes ``layout``
    "ScriptedLoadableModule": {"parent": "qSlicerScriptedLoadableModule"},
    "ScriptedLoadableModuleWidget": {"parent": "qSlicerScriptedLoadableModuleWidget", "layout": "QLayout"},
}


class ToolkitApi:
    """The reference: classes with their bases, members, properties, signals and slots."""

    def __init__(self, document: dict) -> None:
        self.document = document
        self.classes: dict[str, dict] = document["classes"]
        self.every_object = frozenset(document["every_object"])

    @classmethod
    def load(cls, path: Path = REFERENCE) -> ToolkitApi:
        return cls(json.loads(path.read_text(encoding="utf-8")))

    def lineage(self, name: str) -> list[str]:
        """The class and all its bases (PythonQt looks members up along all of them)."""
        seen, pending = [], [name]
        while pending:
            current = pending.pop(0)
            if current in self.classes and current not in seen:
                seen.append(current)
                pending += self.classes[current]["bases"]
        return seen

    def _union(self, name: str, key: str) -> set[str]:
        return {item for cls in self.lineage(name) for item in self.classes[cls][key]}

    def members(self, name: str) -> set[str]:
        return self._union(name, "members")

    def signals(self, name: str) -> set[str]:
        return self._union(name, "signals")

    def slots(self, name: str) -> set[str]:
        return self._union(name, "slots")

    def properties(self, name: str) -> dict[str, bool]:
        found: dict[str, bool] = {}
        for cls in self.lineage(name):
            for prop, writable in self.classes[cls]["properties"].items():
                found[prop] = found.get(prop, False) or writable
        return found

    def has_attribute(self, name: str, attribute: str) -> bool:
        """PythonQt's lookup (PythonQtClassInfo::member): property, method or signal, enum, then ``name_`` for a
        method ``name`` (``exec_``), then what every wrapped object has."""
        members = self.members(name)
        if attribute in self.properties(name) or attribute in members or attribute in self.every_object:
            return True
        return attribute.endswith("_") and not attribute.endswith("__") and attribute[:-1] in members


@dataclass(frozen=True)
class Use:
    """One use of a toolkit class: ``kind`` is "class" (the class itself), "construct", "attribute" (read), "call"
    (``obj.name(...)`` on an instance), "store" (assignment), "signal" (``obj.name.connect``), "connect"
    (``obj.connect("signature", ...)``) or "slot" (a .ui connection's receiving end)."""

    where: str
    cls: str
    kind: str
    name: str = ""


def normalized_signature(signature: str) -> str:
    """As QMetaObject::normalizedSignature for the simple signatures modules write: no spaces, no const&."""
    name, _, arguments = signature.partition("(")
    types = []
    for argument in arguments.rstrip(")").split(","):
        argument = " ".join(argument.split())
        argument = re.sub(r"^const (.*?)\s*&$", r"\1", argument)
        types.append(re.sub(r"\s*([*&<>,])\s*", r"\1", argument))
    return f"{name.strip()}({','.join(type_ for type_ in types if type_)})"


def ui_classes(ui_path: Path) -> tuple[str, dict[str, str]]:
    """The .ui's top widget class and each named widget's class."""
    root = ElementTree.parse(ui_path).getroot().find("widget")
    return root.get("class"), {widget.get("name"): widget.get("class") for widget in root.iter("widget")}


class _Types:
    """Flow-insensitive inference of which toolkit class an expression's value has (``("class", X)`` for the class
    object, ``("instance", X)`` for an instance)."""

    def __init__(self, tree: ast.Module, ui_root: str, ui_widgets: dict[str, str]) -> None:
        self.tree = tree
        self.ui_root, self.ui_widgets = ui_root, ui_widgets
        self.names: dict[ast.AST, dict[str, set]] = defaultdict(lambda: defaultdict(set))  # per function
        self.loop_strings: dict[ast.AST, dict[str, list[str]]] = defaultdict(dict)
        self.module_widgets: dict[ast.AST, set[str]] = defaultdict(set)  # names bound to ....self()
        self.self_attributes: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))  # per class
        self.self_elements: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
        self.returns: dict[str, dict[str, set]] = defaultdict(lambda: defaultdict(set))
        self.class_of: dict[ast.AST, ast.ClassDef] = {}
        self.function_of: dict[ast.AST, ast.AST] = {}
        for cls in (node for node in tree.body if isinstance(node, ast.ClassDef)):
            bases = {ast.unparse(base).split(".")[-1] for base in cls.bases}
            for base, attributes in SLICER_PARENTS.items():
                if base in bases:
                    for attribute, qt_class in attributes.items():
                        self.self_attributes[cls.name][attribute].add(("instance", qt_class))
            for node in ast.walk(cls):
                self.class_of[node] = cls
        for function in (node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.Lambda))):
            for node in ast.walk(function):
                self.function_of[node] = function
        for _ in range(3):  # to a fixed point: assignments may use what later lines assign
            self._bind()

    def _scope(self, node: ast.AST) -> ast.AST:
        return self.function_of.get(node, self.tree)

    def _class_name(self, node: ast.AST) -> str:
        cls = self.class_of.get(node)
        return cls.name if cls is not None else ""

    def _bind(self) -> None:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Assign):
                found = self.of(node.value)
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        self.names[self._scope(node)][target.id] |= found
                        if ast.unparse(node.value).endswith(".widgetRepresentation().self()"):
                            self.module_widgets[self._scope(node)].add(target.id)
                    elif isinstance(target, ast.Attribute) and _is_self(target.value):
                        self.self_attributes[self._class_name(node)][target.attr] |= found
            elif isinstance(node, ast.Return) and node.value is not None:
                function = self._scope(node)
                if isinstance(function, ast.FunctionDef):
                    self.returns[self._class_name(node)][function.name] |= self.of(node.value)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "append":
                owner = node.func.value
                if isinstance(owner, ast.Attribute) and _is_self(owner.value) and node.args:
                    self.self_elements[self._class_name(node)][owner.attr] |= self.of(node.args[0])
            elif isinstance(node, ast.For) and isinstance(node.target, ast.Name):
                iterated = node.iter
                if isinstance(iterated, (ast.Tuple, ast.List)) and all(
                    isinstance(item, ast.Constant) and isinstance(item.value, str) for item in iterated.elts
                ):
                    self.loop_strings[self._scope(node)][node.target.id] = [item.value for item in iterated.elts]
                elif isinstance(iterated, ast.Attribute) and _is_self(iterated.value):
                    elements = self.self_elements[self._class_name(node)][iterated.attr]
                    self.names[self._scope(node)][node.target.id] |= elements

    def _is_ui(self, node: ast.AST) -> bool:
        """``self.ui``, or ``widget.ui`` for a module widget bound by name."""
        if not (isinstance(node, ast.Attribute) and node.attr == "ui" and isinstance(node.value, ast.Name)):
            return False
        return _is_self(node.value) or node.value.id in self.module_widgets[self._scope(node)]

    def of(self, node: ast.AST) -> set[tuple[str, str]]:
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id in TOOLKIT_MODULES:
                return {("class", node.attr)}
            if self._is_ui(node.value):
                return {("instance", self.ui_widgets[node.attr])} if node.attr in self.ui_widgets else set()
            if _is_self(node.value):
                return set(self.self_attributes[self._class_name(node)].get(node.attr, set()))
            return set()
        if isinstance(node, ast.Name):
            return set(self.names[self._scope(node)].get(node.id, set()))
        if isinstance(node, ast.Call):
            func = node.func
            if ast.unparse(func) == "slicer.util.loadUI":
                return {("instance", self.ui_root)}
            if isinstance(func, ast.Name) and func.id == "getattr" and len(node.args) >= 2:
                if self._is_ui(node.args[0]) and isinstance(node.args[1], ast.Name):
                    names = self.loop_strings[self._scope(node)].get(node.args[1].id, [])
                    return {("instance", self.ui_widgets[name]) for name in names if name in self.ui_widgets}
                return set()
            if isinstance(func, ast.Attribute) and _is_self(func.value):
                return set(self.returns[self._class_name(node)].get(func.attr, set()))
            return {("instance", name) for kind, name in self.of(func) if kind == "class"}
        return set()


def _is_self(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id == "self"


def python_uses(source: str, filename: str, ui_path: Path) -> list[Use]:
    """Every use of a toolkit class in ``source`` whose class can be told statically."""
    tree = ast.parse(source, filename=filename)
    types = _Types(tree, *ui_classes(ui_path))
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    uses: list[Use] = []
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id in TOOLKIT_MODULES:
                uses.append(Use(where, node.attr, "class"))
                continue
            for kind, cls in types.of(node.value):
                if node.attr.startswith("__"):
                    continue
                if isinstance(node.ctx, ast.Store):
                    uses.append(Use(where, cls, "store", node.attr))
                elif kind == "instance" and id(node) in called:
                    uses.append(Use(where, cls, "call", node.attr))
                else:
                    uses.append(Use(where, cls, "attribute", node.attr))
        elif isinstance(node, ast.Call):
            for kind, cls in types.of(node.func):
                if kind == "class":
                    uses.append(Use(where, cls, "construct"))
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "connect":
                if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                    for _, cls in types.of(func.value):
                        uses.append(Use(where, cls, "connect", normalized_signature(node.args[0].value)))
                elif isinstance(func.value, ast.Attribute):
                    for _, cls in types.of(func.value.value):
                        uses.append(Use(where, cls, "signal", func.value.attr))
    return uses


def ui_uses(ui_path: Path) -> list[Use]:
    """The .ui's widget classes, the properties it sets on them, and its signal/slot connections."""
    root = ElementTree.parse(ui_path).getroot()
    _, classes = ui_classes(ui_path)
    uses = []
    for widget in root.iter("widget"):
        where = f"{ui_path.name}:{widget.get('name')}"
        uses.append(Use(where, widget.get("class"), "class"))
        for prop in widget.findall("property"):
            if prop.get("stdset") != "0":  # stdset="0": a dynamic property (e.g. SlicerParameterName)
                uses.append(Use(where, widget.get("class"), "store", prop.get("name")))
    for connection in root.iter("connection"):
        where = f"{ui_path.name}:connection"
        sender, receiver = classes.get(connection.findtext("sender")), classes.get(connection.findtext("receiver"))
        uses.append(Use(where, sender, "connect", normalized_signature(connection.findtext("signal"))))
        uses.append(Use(where, receiver, "slot", normalized_signature(connection.findtext("slot"))))
    return uses


def problems(uses: list[Use], api: ToolkitApi) -> list[str]:
    """Each use that Slicer 5.8 would not honour, in words."""
    found = []
    for use in uses:
        if use.cls not in api.classes:
            found.append(
                f"{use.where}: {use.cls} is not in the reference (a class Slicer 5.8 lacks, or one to add to "
                "SEED_CLASSES in Testing/slicer_reference/extract_toolkit_api.py)"
            )
            continue
        if use.kind == "construct" and not api.classes[use.cls]["constructor"]:
            found.append(f"{use.where}: {use.cls} cannot be constructed from Python")
        elif use.kind in ("attribute", "call") and not api.has_attribute(use.cls, use.name):
            found.append(f"{use.where}: {use.cls} has no {use.name}")
        elif use.kind == "call" and use.name in api.properties(use.cls):
            found.append(
                f"{use.where}: {use.cls}.{use.name} is a property in PythonQt (its value, not a method): "
                f"read {use.name} without calling it"
            )
        elif use.kind == "store":
            writable = api.properties(use.cls).get(use.name)
            if writable is None:
                found.append(f"{use.where}: {use.cls} has no property {use.name} (an assignment would set nothing)")
            elif not writable:
                found.append(f"{use.where}: {use.cls}.{use.name} is read-only")
        elif use.kind == "signal" and use.name not in {sig.split("(")[0] for sig in api.signals(use.cls)}:
            found.append(f"{use.where}: {use.cls} has no signal {use.name}")
        elif use.kind == "connect" and use.name not in api.signals(use.cls):
            found.append(
                f"{use.where}: {use.cls} has no signal {use.name} (its signals: {sorted(api.signals(use.cls))})"
            )
        elif use.kind == "slot" and use.name not in api.slots(use.cls) | api.signals(use.cls):
            found.append(f"{use.where}: {use.cls} has no slot {use.name}")
    return found
