"""Write what Python code in a Slicer release can reach on the Qt, CTK and Slicer widget classes the module uses
(and on their base classes) to ``<tag>/toolkit_api.json``: member names, properties (and whether they can be set),
signal and slot signatures. Only names and signatures are stored, no source text.

Where Python's view of these classes comes from in Slicer (PythonQt):

- every QObject class: its meta-object, i.e. the Q_PROPERTYs, signals, public slots, Q_INVOKABLE methods and
  registered enums (Q_ENUM/Q_ENUMS/Q_FLAG/Q_FLAGS) of its C++ header. For Qt classes these are read from the Qt 5.15
  headers (Slicer 5.8 builds with Qt 5.15); for CTK classes from CTK at the commit Slicer pins
  (SuperBuild/External_CTK.cmake); for Slicer classes from the Slicer tag. CTK and Slicer classes are wrapped "light"
  (CTK's CMake/ctkWrapPythonQt.py): constructor and meta-object only, so their other public methods are NOT callable
  from Python and are not listed, except those that CTK's and Slicer's PythonQt decorator classes add
  (Libs/Core, Libs/Widgets ``ctk*PythonQtDecorators.h``; Base/QTCore, Base/QTGUI ``qSlicerBase*PythonQtDecorators.h``);
- Qt classes in addition: PythonQt's generated wrappers (``generated_cpp_511``, the set PythonQt's CMakeLists.txt
  uses for Qt newer than 5.10) at the commit CTK pins (CMakeExternals/PythonQt.cmake): their methods, static methods,
  enums and the classes' extra parents;
- PythonQt itself: the decorators every QObject gets (src/PythonQtStdDecorators.h: connect, disconnect, parent, ...
  and static ones such as QTimer.singleShot(msec, callable)) and the methods of every wrapped object
  (src/PythonQtInstanceWrapper.cpp: className, inherits, help, delete).

Usage (git directories as the search tool's fetch gives them; Qt headers from Debian's qtbase5-dev 5.15, e.g.
``apt-get download qtbase5-dev && dpkg-deb -x qtbase5-dev_*.deb qtbase``):

    python extract_toolkit_api.py --slicer SLICER_GIT --ctk CTK_GIT --pythonqt PYTHONQT_GIT \
        --qt-include qtbase/usr/include/x86_64-linux-gnu/qt5 --qt-source "Debian qtbase5-dev 5.15.8+dfsg-11+deb12u3" \
        --tag v5.8.0
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# The classes the module (OrganDETRSlicer.py, its .ui) and the test stand-ins (Testing/slicer_module/qt_stand_ins.py)
# use; their base classes are added. ctkPathLineEdit is here for the tests that prove the check fails.
SEED_CLASSES = {
    "qt": [
        *("QObject", "QWidget", "QLabel", "QAbstractButton", "QPushButton", "QCheckBox", "QRadioButton"),
        *("QLineEdit", "QComboBox", "QProgressBar", "QTableWidget", "QTableWidgetItem", "QHBoxLayout", "QVBoxLayout"),
        *("QTimer", "QKeySequence", "Qt", "QShortcut", "QFileDialog", "QFile"),
    ],
    "ctk": ["ctkCollapsibleButton", "ctkSliderWidget", "ctkCheckBox", "ctkComboBox", "ctkPathLineEdit"],
    "slicer": [
        "qMRMLWidget",
        "qMRMLNodeComboBox",
        "qSlicerScriptedLoadableModuleWidget",
        "qSlicerScriptedLoadableModule",
    ],
}
CTK_HEADER_DIRS = ("Libs/Widgets",)
SLICER_HEADER_DIRS = ("Libs/MRML/Widgets", "Base/QTGUI", "Base/QTCore")
QT_HEADER_DIRS = ("QtCore", "QtGui", "QtWidgets")
PYTHONQT_GENERATED = "generated_cpp_511"


def git_show(git_dir: str, revision: str, path: str) -> str:
    return subprocess.run(
        ["git", f"--git-dir={git_dir}", "show", f"{revision}:{path}"], check=True, capture_output=True, text=True
    ).stdout


def git_files(git_dir: str, revision: str, folder: str) -> list[str]:
    listing = subprocess.run(
        ["git", f"--git-dir={git_dir}", "ls-tree", "-r", "--name-only", revision, folder],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return listing.split()


def git_commit(git_dir: str, revision: str) -> str:
    return subprocess.run(
        ["git", f"--git-dir={git_dir}", "rev-parse", f"{revision}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


# --- C++ headers --------------------------------------------------------------------------------------------------

_NOISE = re.compile(
    r"\b(?:Q_DECL_\w+|QT_DEPRECATED\w*|Q_REQUIRED_RESULT|Q_ALWAYS_INLINE|Q_REVISION|QT6_\w+|Q_NORETURN|"
    r"Q_DECL_CONSTEXPR|Q_DECL_OVERRIDE|Q_DECL_FINAL|Q_DECL_NOTHROW|Q_DECL_NOEXCEPT|Q_MOC_RUN)\b"
)


def _strip_comments_and_preprocessor(text: str) -> str:
    # String literals become "" (they may hold braces or //), comments a space.
    text = re.sub(
        r"\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'|/\*.*?\*/|//[^\n]*",
        lambda match: '""' if match.group(0)[0] in "\"'" else " ",
        text,
        flags=re.S,
    )
    text = re.sub(r"\\\n", " ", text)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def _matching(text: str, start: int, opening: str, closing: str) -> int:
    """Index just past the bracket that closes the one at ``start``."""
    depth = 0
    for index in range(start, len(text)):
        if text[index] == opening:
            depth += 1
        elif text[index] == closing:
            depth -= 1
            if depth == 0:
                return index + 1
    raise ValueError(f"unbalanced {opening}{closing}")


def _remove_noise(text: str) -> str:
    """Drop deprecation and decoration macros, with their argument list if they have one."""
    while True:
        match = _NOISE.search(text)
        if match is None:
            return text
        end = match.end()
        rest = text[end:]
        if rest.lstrip().startswith("("):
            end = _matching(text, end + len(rest) - len(rest.lstrip()), "(", ")")
        text = text[: match.start()] + " " + text[end:]


def _split_top_level(text: str, separator: str = ",") -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "(<[{":
            depth += 1
        elif char in ")>]}":
            depth -= 1
        if char == separator and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return parts


def normalized_type(argument: str) -> str | None:
    """A parameter's type as QMetaObject::normalizedSignature writes it (None for QPrivateSignal)."""
    argument = _split_top_level(argument, "=")[0].strip()
    tokens = re.findall(r"\w+|::|[<>*&,]", argument)
    if not tokens or tokens == ["void"]:
        return ""
    if tokens[-1] == "QPrivateSignal":
        return None
    words = [token for token in tokens if re.fullmatch(r"\w+", token)]
    type_words = {"unsigned", "signed", "int", "long", "short", "char", "double", "float", "bool", "const"}
    if (
        len(tokens) > 1
        and re.fullmatch(r"\w+", tokens[-1])
        and tokens[-2] != "::"
        and not (len(words) >= 2 and tokens[-1] in type_words)
    ):
        tokens = tokens[:-1]  # the parameter's name
    if tokens[0] == "const" and tokens[-1] == "&" and "*" not in tokens:
        tokens = tokens[1:-1]
    elif tokens[-1] == "&" and "*" not in tokens:
        tokens = tokens[:-1]
    written = ""
    for token in tokens:
        if written and re.fullmatch(r"\w+", token) and re.fullmatch(r"\w", written[-1]):
            written += " "
        written += token
    return written


def signatures(declaration: str) -> tuple[str, list[str]] | None:
    """The name of a declared function and its normalized signatures (one more for each default argument)."""
    declaration = declaration.strip()
    match = re.search(r"(~?\w+)\s*\(", declaration)
    if match is None or "operator" in declaration[: match.end()]:
        return None
    name = match.group(1)
    close = _matching(declaration, match.end() - 1, "(", ")")
    arguments = [a for a in _split_top_level(declaration[match.end() : close - 1]) if a.strip()]
    types = []
    required = 0
    for argument in arguments:
        written = normalized_type(argument)
        if written is None:
            continue
        types.append(written)
        if len(_split_top_level(argument, "=")) == 1:
            required = len(types)
    return name, [f"{name}({','.join(types[:count])})" for count in range(required, len(types) + 1)]


@dataclass
class MetaClass:
    """What a C++ class's meta-object (and its header) says."""

    name: str
    bases: list[str]
    is_qobject: bool
    properties: dict[str, bool] = field(default_factory=dict)
    signals: set[str] = field(default_factory=set)
    slots: set[str] = field(default_factory=set)
    methods: set[str] = field(default_factory=set)  # slots, signals and Q_INVOKABLE methods by name
    enums: dict[str, list[str]] = field(default_factory=dict)  # every public enum and its values
    registered_enums: set[str] = field(default_factory=set)  # Q_ENUM(S) / Q_FLAG(S) names
    flags: dict[str, str] = field(default_factory=dict)  # Q_DECLARE_FLAGS(Flags, Enum)
    constructor: bool = False

    def exposed_enums(self) -> set[str]:
        names = set()
        for registered in self.registered_enums:
            enum = self.flags.get(registered, registered)
            if enum in self.enums:
                names |= {registered, *self.enums[enum]}
        return names


def find_class(text: str, name: str) -> tuple[list[str], str] | None:
    """Public bases and body of ``class [EXPORT] name : bases { body };`` in a header's text."""
    pattern = rf"\bclass\s+(?:\w+_EXPORT\s+)?{name}\s*(?:final\s*)?(:[^{{;]*)?\{{"
    match = re.search(pattern, text)
    if match is None:
        return None
    bases = re.findall(r"public\s+(?:virtual\s+)?([\w:]+)", match.group(1) or "")
    end = _matching(text, match.end() - 1, "{", "}")
    return bases, text[match.end() : end - 1]


def parse_class(name: str, bases: list[str], body: str) -> MetaClass:
    meta = MetaClass(name, bases, is_qobject=bool(re.search(r"\bQ_OBJECT\b", body)))
    body = _remove_noise(body)
    # Macros that take no semicolon: read the ones that matter, drop the others.
    for macro in re.finditer(r"\b(Q_PRIVATE_PROPERTY|Q_PROPERTY)\s*\(", body):
        content = body[macro.end() : _matching(body, macro.end() - 1, "(", ")") - 1]
        if macro.group(1) == "Q_PRIVATE_PROPERTY":
            content = _split_top_level(content)[1]
        words = re.split(r"\s+", content.strip())
        keyword = next(i for i, word in enumerate(words) if word in ("READ", "MEMBER"))
        meta.properties[words[keyword - 1].lstrip("*&")] = "WRITE" in words or "MEMBER" in words
    for macro in re.finditer(r"\b(Q_ENUMS|Q_FLAGS|Q_ENUM|Q_FLAG)\s*\(([^)]*)\)", body):
        meta.registered_enums |= set(re.findall(r"\w+", macro.group(2)))
    for macro in re.finditer(r"\bQ_DECLARE_FLAGS\s*\(\s*(\w+)\s*,\s*(\w+)\s*\)", body):
        meta.flags[macro.group(1)] = macro.group(2)
    while True:
        macro = re.search(r"\bQ_[A-Z_]+\s*\(", body)
        if macro is None:
            break
        body = body[: macro.start()] + " ; " + body[_matching(body, macro.end() - 1, "(", ")") :]
    body = re.sub(r"\b(?:Q_OBJECT|Q_GADGET|QVTK_OBJECT)\b", " ; ", body)

    access = "private"
    index, current = 0, ""
    while index < len(body):
        char = body[index]
        if char == ":" and body[index + 1 : index + 2] != ":" and body[index - 1 : index] != ":":
            label = current.strip()
            if re.fullmatch(r"(public|protected|private)(\s+(Q_SLOTS|slots))?|Q_SIGNALS|signals", label):
                access = {"Q_SIGNALS": "signals", "signals": "signals"}.get(label, label.replace("Q_SLOTS", "slots"))
                current, index = "", index + 1
                continue
        if char == "{":
            end = _matching(body, index, "{", "}")
            _declaration(meta, access, current, body[index + 1 : end - 1])
            current, index = "", end
            continue
        if char == ";":
            _declaration(meta, access, current, None)
            current, index = "", index + 1
            continue
        current += char
        index += 1
    return meta


def _declaration(meta: MetaClass, access: str, text: str, block: str | None) -> None:
    text = " ".join(text.split())
    if not text or access in ("private", "protected", "private slots", "protected slots"):
        return
    enum = re.match(r"enum\s+(?:class\s+|struct\s+)?(\w+)", text)
    if enum and block is not None:
        values = [item.split("=")[0].strip() for item in _split_top_level(block)]
        meta.enums[enum.group(1)] = [value for value in values if value]
        return
    if text.startswith(("typedef", "using", "friend", "class ", "struct ", "template", "enum")):
        return
    found = signatures(text)
    if found is None:
        return
    name, written = found
    if name == meta.name and access == "public":
        meta.constructor = True
    elif access == "signals":
        meta.signals |= set(written)
        meta.methods.add(name)
    elif access == "public slots":
        meta.slots |= set(written)
        meta.methods.add(name)
    elif "Q_INVOKABLE" in text:
        meta.methods.add(name)


# --- PythonQt -----------------------------------------------------------------------------------------------------


@dataclass
class Wrapper:
    methods: set[str] = field(default_factory=set)
    enums: set[str] = field(default_factory=set)
    properties: dict[str, bool] = field(default_factory=dict)
    constructor: bool = False


def parse_wrapper(name: str, body: str) -> Wrapper:
    wrapper = Wrapper()
    for enum in re.finditer(r"enum\s+(\w+)\s*\{([^}]*)\}", body):
        wrapper.enums |= {enum.group(1), *re.findall(r"(\w+)\s*=", enum.group(2))}
    for flags in re.finditer(r"Q_DECLARE_FLAGS\(\s*(\w+)", body):
        wrapper.enums.add(flags.group(1))
    slots = body.split("public slots:", 1)[1] if "public slots:" in body else ""
    for line in slots.splitlines():
        match = re.search(r"(\w+)\s*\(", line)
        if match is None:
            continue
        method = match.group(1)
        if method.startswith("new_"):
            wrapper.constructor = True
        elif method.startswith("delete_") or method in ("py_toString",) or method.startswith("__"):
            continue
        elif method.startswith(f"static_{name}_"):
            wrapper.methods.add(method[len(f"static_{name}_") :])
        elif method.startswith("py_q_"):
            wrapper.methods.add(method[len("py_q_") :])
        elif method.startswith("py_get_"):
            wrapper.properties.setdefault(method[len("py_get_") :], False)
        elif method.startswith("py_set_"):
            wrapper.properties[method[len("py_set_") :]] = True
        else:
            wrapper.methods.add(method)
    return wrapper


def pythonqt_sources(git_dir: str, commit: str) -> tuple[dict[str, str], dict[str, str], dict[str, list[str]]]:
    """Wrapper class bodies by class, CPP classes' registered parents, and extra parents (addParentClass)."""
    bodies, cpp_parents, extra_parents = {}, {}, {}
    for path in git_files(git_dir, commit, PYTHONQT_GENERATED):
        if not path.endswith((".h", "_init.cpp")):
            continue
        text = git_show(git_dir, commit, path)
        for match in re.finditer(r"^class PythonQtWrapper_(\w+) : public QObject\s*\{", text, flags=re.M):
            end = _matching(text, match.end() - 1, "{", "}")
            bodies[match.group(1)] = text[match.end() : end - 1]
        for match in re.finditer(r'registerCPPClass\("(\w+)", "(\w*)"', text):
            cpp_parents[match.group(1)] = match.group(2)
        for match in re.finditer(r'addParentClass\("(\w+)", "(\w+)"', text):
            extra_parents.setdefault(match.group(1), []).append(match.group(2))
    return bodies, cpp_parents, extra_parents


def decorator_members(header: str) -> dict[str, set[str]]:
    """Members that a PythonQt decorator class (``class ...Decorators : public QObject``) adds: a public slot whose
    first parameter is ``Class*`` becomes a method of Class, ``static_Class_name`` a static method of Class."""
    text = _strip_comments_and_preprocessor(header)
    members: dict[str, set[str]] = {}
    for match in re.finditer(r"\bclass\s+(?:\w+_EXPORT\s+)?(\w+Decorators)\b", text):
        _, body = find_class(text, match.group(1))
        while re.search(r"\{[^{}]*\}", body):
            body = re.sub(r"\{[^{}]*\}", ";", body)  # inline bodies
        sections = re.split(r"\b((?:public|protected|private)(?:\s+(?:Q_SLOTS|slots))?|Q_SIGNALS|signals)\s*:", body)
        public_slots = [sections[i + 1] for i in range(1, len(sections) - 1, 2) if sections[i].startswith("public ")]
        for declaration in ";".join(public_slots).split(";"):
            found = signatures(declaration)
            if found is None:
                continue
            method = found[0]
            if method.startswith(("new_", "delete_")):
                continue
            static = re.match(r"static_([A-Za-z0-9]+)_(\w+)", method)
            if static:
                members.setdefault(static.group(1), set()).add(static.group(2))
                continue
            arguments = declaration[declaration.index("(") + 1 :].split(",")[0]
            first = re.findall(r"\w+", arguments.replace("const", " "))
            if first:
                members.setdefault(first[0], set()).add(method)
    return members


def pythonqt_builtins(git_dir: str, commit: str) -> tuple[dict[str, set[str]], list[str]]:
    """PythonQt's decorator members by class (connect, disconnect, ... on QObject; QTimer.singleShot(msec, callable);
    ...), and the methods of every wrapped object."""
    members = decorator_members(git_show(git_dir, commit, "src/PythonQtStdDecorators.h"))
    # PythonQt's property lookup (src/PythonQtClassInfo.cpp, lookForPropertyAndCache): "name" stands for objectName
    # when built with PYTHONQT_SUPPORT_NAME_PROPERTY (its CMakeLists.txt defines it), and QTimer's singleShot
    # property is hidden so that QTimer.singleShot is the static method.
    lookup = git_show(git_dir, commit, "src/PythonQtClassInfo.cpp")
    assert "-DPYTHONQT_SUPPORT_NAME_PROPERTY" in git_show(git_dir, commit, "CMakeLists.txt")
    assert 'qstrcmp(attributeName, "name")' in lookup and 'qstrcmp(attributeName, "singleShot")' in lookup
    instance = git_show(git_dir, commit, "src/PythonQtInstanceWrapper.cpp")
    table = instance[instance.index("PythonQtInstanceWrapper_methods[]") :]
    every_object = re.findall(r'\{"(\w+)", reinterpret_cast', table[: table.index("{nullptr")])
    return members, sorted(every_object)


# --- putting it together ------------------------------------------------------------------------------------------


def pinned(text: str, variable: str) -> str:
    match = re.search(rf"{variable}\s*\n?\s*\"?([0-9a-f]{{40}})\"?", text)
    if match is None:
        raise ValueError(f"no pinned commit for {variable}")
    return match.group(1)


class Headers:
    """Class name -> (bases, body) from a set of headers, found by scanning them."""

    def __init__(self, texts: dict[str, str]) -> None:
        self._texts = {path: _strip_comments_and_preprocessor(text) for path, text in texts.items()}
        self._where: dict[str, str] = {}
        for path, text in self._texts.items():
            for match in re.finditer(r"\bclass\s+(?:\w+_EXPORT\s+)?(\w+)\s*(?:final\s*)?(?::[^{;]*)?\{", text):
                self._where.setdefault(match.group(1), path)

    def find(self, name: str) -> tuple[str, list[str], str] | None:
        path = self._where.get(name)
        if path is None:
            return None
        bases, body = find_class(self._texts[path], name)
        return path, bases, body


def build(args: argparse.Namespace) -> dict:
    slicer_commit = git_commit(args.slicer, args.tag)
    ctk_commit = pinned(git_show(args.slicer, args.tag, "SuperBuild/External_CTK.cmake"), r"Slicer_\$\{proj\}_GIT_TAG")
    pythonqt_commit = pinned(git_show(args.ctk, ctk_commit, "CMakeExternals/PythonQt.cmake"), r"set\(revision_tag")
    qt_root = Path(args.qt_include)
    qt_headers = Headers(
        {
            str(path.relative_to(qt_root)): path.read_text(encoding="utf-8", errors="replace")
            for folder in QT_HEADER_DIRS
            for path in sorted((qt_root / folder).glob("*.h"))
        }
    )
    ctk_headers = Headers(
        {
            path: git_show(args.ctk, ctk_commit, path)
            for folder in CTK_HEADER_DIRS
            for path in git_files(args.ctk, ctk_commit, folder)
            if path.endswith(".h")
        }
    )
    slicer_headers = Headers(
        {
            path: git_show(args.slicer, args.tag, path)
            for folder in SLICER_HEADER_DIRS
            for path in git_files(args.slicer, args.tag, folder)
            if path.endswith(".h")
        }
    )
    wrappers, cpp_parents, extra_parents = pythonqt_sources(args.pythonqt, pythonqt_commit)
    decorators, every_object = pythonqt_builtins(args.pythonqt, pythonqt_commit)
    for git_dir, revision, path in (
        (args.ctk, ctk_commit, "Libs/Core/ctkCorePythonQtDecorators.h"),
        (args.ctk, ctk_commit, "Libs/Widgets/ctkWidgetsPythonQtDecorators.h"),
        (args.slicer, args.tag, "Base/QTCore/qSlicerBaseQTCorePythonQtDecorators.h"),
        (args.slicer, args.tag, "Base/QTGUI/qSlicerBaseQTGUIPythonQtDecorators.h"),
    ):
        for cls, names in decorator_members(git_show(git_dir, revision, path)).items():
            decorators.setdefault(cls, set()).update(names)

    classes: dict[str, dict] = {}
    pending = [(module, name) for module, names in SEED_CLASSES.items() for name in names]
    while pending:
        module, name = pending.pop()
        if name in classes:
            continue
        # A class is looked for in its own library first, then in the libraries it builds on.
        search = {"qt": ["qt"], "ctk": ["ctk", "qt"], "slicer": ["slicer", "ctk", "qt"]}[module]
        headers = {"qt": qt_headers, "ctk": ctk_headers, "slicer": slicer_headers}
        found = None
        for library in search if name != "Qt" else []:
            found = headers[library].find(name)
            if found is not None:
                module = library
                break
        entry = {"module": module, "bases": [], "constructor": False, "members": set(), "properties": {}}
        entry |= {"signals": set(), "slots": set()}
        if found is not None:
            path, bases, body = found
            meta = parse_class(name, bases, body)
            entry["header"] = path
            if meta.is_qobject:
                entry["bases"] = bases[:1]  # the meta-object's superclass (PythonQt sees no other C++ base)
                entry["members"] |= meta.methods | meta.exposed_enums()
                entry["properties"] |= meta.properties
                entry["signals"] |= meta.signals
                entry["slots"] |= meta.slots
                entry["constructor"] = meta.constructor
        if module == "qt":
            wrapper = parse_wrapper(name, wrappers[name]) if name in wrappers else Wrapper()
            entry["members"] |= wrapper.methods | wrapper.enums
            entry["properties"] |= wrapper.properties
            entry["constructor"] = entry["constructor"] or wrapper.constructor
            if name in cpp_parents:
                entry["bases"] = [cpp_parents[name]] if cpp_parents[name] else []
            entry["bases"] += [parent for parent in extra_parents.get(name, []) if parent not in entry["bases"]]
        entry["members"] |= decorators.get(name, set())
        if name == "QObject":
            entry["properties"]["name"] = True  # PYTHONQT_SUPPORT_NAME_PROPERTY: objectName
        if name == "QTimer":
            del entry["properties"]["singleShot"]  # hidden by PythonQt: QTimer.singleShot is the static method
        classes[name] = entry
        for base in entry["bases"]:
            pending.append((module, base))

    for entry in classes.values():
        for key in ("members", "signals", "slots"):
            entry[key] = sorted(entry[key])
        entry["properties"] = dict(sorted(entry["properties"].items()))
    qt_version = re.search(
        r'QTCORE_VERSION_STR\s+"([^"]+)"', (qt_root / "QtCore" / "qtcoreversion.h").read_text(encoding="utf-8")
    ).group(1)
    return {
        "about": (
            "Names and signatures only, extracted by ../extract_toolkit_api.py; see README.md for the sources and "
            "their licences."
        ),
        "sources": {
            "slicer": {"repository": "https://github.com/Slicer/Slicer", "tag": args.tag, "commit": slicer_commit},
            "ctk": {
                "repository": "https://github.com/commontk/CTK",
                "commit": ctk_commit,
                "pinned_by": "Slicer SuperBuild/External_CTK.cmake",
            },
            "pythonqt": {
                "repository": "https://github.com/commontk/PythonQt",
                "commit": pythonqt_commit,
                "pinned_by": "CTK CMakeExternals/PythonQt.cmake",
                "wrappers": PYTHONQT_GENERATED,
            },
            "qt": {"version": qt_version, "headers": args.qt_source},
        },
        "every_object": every_object,
        "classes": dict(sorted(classes.items())),
    }


def write(document: dict, path: Path) -> None:
    """JSON with one line per class field, so that a diff shows which class changed."""
    lines = ["{"]
    for key in ("about", "sources", "every_object"):
        lines.append(f" {json.dumps(key)}: {json.dumps(document[key])},")
    lines.append(' "classes": {')
    for index, (name, entry) in enumerate(document["classes"].items()):
        lines.append(f"  {json.dumps(name)}: {{")
        fields = [f"   {json.dumps(key)}: {json.dumps(value)}" for key, value in entry.items()]
        lines.append(",\n".join(fields))
        lines.append("  }" + ("," if index < len(document["classes"]) - 1 else ""))
    lines.append(" }")
    lines.append("}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    json.loads(path.read_text(encoding="utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slicer", required=True, help="Slicer git directory")
    parser.add_argument("--ctk", required=True, help="CTK git directory")
    parser.add_argument("--pythonqt", required=True, help="commontk/PythonQt git directory")
    parser.add_argument("--qt-include", required=True, help="Qt 5.15 include folder (with QtCore, QtGui, QtWidgets)")
    parser.add_argument("--qt-source", required=True, help="where the Qt headers came from (recorded)")
    parser.add_argument("--tag", default="v5.8.0")
    args = parser.parse_args()
    document = build(args)
    write(document, Path(__file__).resolve().parent / args.tag / "toolkit_api.json")


if __name__ == "__main__":
    main()
