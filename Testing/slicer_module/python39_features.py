"""What in a source file needs a Python newer than 3.9 (Slicer 5.8's), found with ``ast``, beyond what vermin sees:

- syntax: ``ast.parse(source, feature_version=(3, 9))`` (``match``, ``except*``, ...);
- ``X | Y`` types where Python 3.9 evaluates them: every annotation of a file without
  ``from __future__ import annotations`` (function signatures, module and class variables), annotations that
  pydantic or Slicer's parameterNodeWrapper evaluate even with that import (classes derived from ``BaseModel``,
  classes decorated with ``parameterNodeWrapper``), and unions built outside annotations (``isinstance(x, A | B)``,
  ``Alias = A | None``); vermin's union check ignores the ``__future__`` import, so it is not used;
- library features a few lines here can name even where vermin cannot resolve the object: ``zip(strict=)``,
  ``dataclass(slots=, kw_only=, match_args=)``, ``.bit_count()``, 3.10+ ``typing`` names, ``itertools.pairwise``.
"""

from __future__ import annotations

import ast
import builtins

TARGET = (3, 9)
BUILTIN_TYPES = {name for name, value in vars(builtins).items() if isinstance(value, type)}
TYPE_MODULES = {"typing", "collections.abc", "collections", "pathlib", "os", "numbers", "enum"}
TYPING_AFTER_39 = {
    "TypeAlias": "3.10",
    "ParamSpec": "3.10",
    "Concatenate": "3.10",
    "TypeGuard": "3.10",
    "is_typeddict": "3.10",
    "Self": "3.11",
    "Never": "3.11",
    "LiteralString": "3.11",
    "Required": "3.11",
    "NotRequired": "3.11",
    "Unpack": "3.11",
    "TypeVarTuple": "3.11",
    "assert_never": "3.11",
    "assert_type": "3.11",
    "reveal_type": "3.11",
    "dataclass_transform": "3.11",
    "override": "3.12",
    "TypeAliasType": "3.12",
    "ReadOnly": "3.13",
    "TypeIs": "3.13",
}
DATACLASS_KEYWORDS_AFTER_39 = {"slots": "3.10", "kw_only": "3.10", "match_args": "3.10", "weakref_slot": "3.11"}
EVALUATING_BASES = {"BaseModel", "RootModel"}  # pydantic evaluates annotations, strings included
EVALUATING_DECORATORS = {"parameterNodeWrapper"}  # Slicer's parameterNodeWrapper: typing.get_type_hints


def _annotation_nodes(tree: ast.Module) -> list[tuple[ast.AST, bool]]:
    """Every annotation, and whether Python evaluates it at definition time without the __future__ import
    (parameters, returns, module and class variables: yes; local variables in a function: no)."""
    found = []
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            body = node.body if isinstance(node.body, list) else [node.body]
            for statement in body:
                in_function |= {id(inner) for inner in ast.walk(statement)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args
            every = arguments.posonlyargs + arguments.args + arguments.kwonlyargs
            every += [arg for arg in (arguments.vararg, arguments.kwarg) if arg is not None]
            found += [(arg.annotation, True) for arg in every if arg.annotation is not None]
            if node.returns is not None:
                found.append((node.returns, True))
        elif isinstance(node, ast.AnnAssign):
            found.append((node.annotation, id(node) not in in_function))
    return found


def _evaluated_class_annotations(tree: ast.Module) -> list[tuple[ast.AST, int]]:
    """Annotations of the classes whose annotations a library evaluates (pydantic models, parameter node classes),
    their string annotations parsed."""
    evaluating = set(EVALUATING_BASES)
    classes = [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    for _ in classes:  # classes derived from such classes in the same file
        for cls in classes:
            if {ast.unparse(base).split(".")[-1] for base in cls.bases} & evaluating:
                evaluating.add(cls.name)
    found = []
    for cls in classes:
        decorators = {ast.unparse(d).split(".")[-1].split("(")[0] for d in cls.decorator_list}
        bases = {ast.unparse(base).split(".")[-1] for base in cls.bases}
        if cls.name in evaluating or bases & evaluating or decorators & EVALUATING_DECORATORS:
            for statement in cls.body:
                if isinstance(statement, ast.AnnAssign):
                    annotation = statement.annotation
                    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
                        annotation = ast.parse(annotation.value, mode="eval").body
                    found.append((annotation, statement.lineno))
    return found


def _has_union(node: ast.AST) -> bool:
    return any(isinstance(inner, ast.BinOp) and isinstance(inner.op, ast.BitOr) for inner in ast.walk(node))


def _type_names(tree: ast.Module) -> set[str]:
    """Names that stand for types here: classes defined in the file and names imported from typing-ish modules."""
    names = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in TYPE_MODULES:
            names |= {alias.asname or alias.name for alias in node.names}
    return names


def _looks_like_type(node: ast.AST, type_names: set[str]) -> bool:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _looks_like_type(node.left, type_names) or _looks_like_type(node.right, type_names)
    if isinstance(node, ast.Constant):
        return node.value is None
    if isinstance(node, ast.Name):
        return node.id in BUILTIN_TYPES or node.id in type_names
    if isinstance(node, ast.Subscript):
        return _looks_like_type(node.value, type_names)
    if isinstance(node, ast.Attribute):
        return ast.unparse(node.value) in {"typing", "os", "pathlib", "collections.abc"}
    return False


def features_after_39(source: str, filename: str) -> list[str]:
    """What in ``source`` a Python 3.9 would refuse or fail on, as ``file:line: what``."""
    try:
        tree = ast.parse(source, filename=filename, feature_version=TARGET)
    except SyntaxError as error:
        return [f"{filename}:{error.lineno}: syntax of a later Python: {error.msg}"]
    found = []
    future = any(
        isinstance(node, ast.ImportFrom)
        and node.module == "__future__"
        and any(alias.name == "annotations" for alias in node.names)
        for node in tree.body
    )
    annotation_ids = set()
    for annotation, evaluated in _annotation_nodes(tree):
        annotation_ids |= {id(inner) for inner in ast.walk(annotation)}
        if evaluated and not future and _has_union(annotation):
            found.append(f"{filename}:{annotation.lineno}: X | Y annotation evaluated at definition time")
    for annotation, line in _evaluated_class_annotations(tree):
        if _has_union(annotation):
            found.append(f"{filename}:{line}: X | Y annotation that pydantic / parameterNodeWrapper evaluates")
    type_names = _type_names(tree)
    for node in ast.walk(tree):
        line = f"{filename}:{getattr(node, 'lineno', 0)}"
        if (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.BitOr)
            and id(node) not in annotation_ids
            and (_looks_like_type(node.left, type_names) or _looks_like_type(node.right, type_names))
        ):
            found.append(f"{line}: X | Y type built at run time ({ast.unparse(node)})")
        elif isinstance(node, ast.Call):
            callee = ast.unparse(node.func)
            keywords = {keyword.arg for keyword in node.keywords}
            if callee == "zip" and "strict" in keywords:
                found.append(f"{line}: zip(strict=) needs 3.10")
            if callee.split(".")[-1] == "dataclass":
                for keyword in sorted(keywords & set(DATACLASS_KEYWORDS_AFTER_39)):
                    found.append(f"{line}: dataclass({keyword}=) needs {DATACLASS_KEYWORDS_AFTER_39[keyword]}")
            if isinstance(node.func, ast.Attribute) and node.func.attr == "bit_count":
                found.append(f"{line}: int.bit_count needs 3.10")
            if callee in ("itertools.pairwise", "pairwise", "aiter", "anext"):
                found.append(f"{line}: {callee} needs 3.10")
        elif isinstance(node, ast.ImportFrom) and node.module in ("typing", "itertools"):
            for alias in node.names:
                if node.module == "typing" and alias.name in TYPING_AFTER_39:
                    found.append(f"{line}: typing.{alias.name} needs {TYPING_AFTER_39[alias.name]}")
                if node.module == "itertools" and alias.name == "pairwise":
                    found.append(f"{line}: itertools.pairwise needs 3.10")
        elif isinstance(node, ast.Attribute) and ast.unparse(node.value) == "typing" and node.attr in TYPING_AFTER_39:
            found.append(f"{line}: typing.{node.attr} needs {TYPING_AFTER_39[node.attr]}")
    return found
