"""What the module installs into Slicer's Python, as a plan that can be shown, tested and then executed.

Remote mode needs only the torch-free client (shipped inside the module) and pydantic, a small wheel. The embedded
backend also needs torch, installed only through Slicer's PyTorch extension (PyTorchUtils picks the CPU or CUDA
build for the computer), and the backend itself, installed with pip from the backend source shipped with the
extension (or the repository a clone runs from): nothing is fetched from an index under the project's name.
pip runs with a constraints file that pins numpy, SimpleITK, requests and torch to the versions present, so it can
never replace Slicer's own packages (it fails with a message instead). The functions here only compute; the
module's logic executes the plan after the user confirmed it, and can remove what it installed.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

BACKEND_DISTRIBUTION = "organdetr"
BACKEND_IMPORT = "organdetr_backend"
CLIENT_REQUIREMENT = "pydantic>=2.5,<3"  # the only package remote mode needs beyond what Slicer bundles
TORCH = "torch"
PYDANTIC = "pydantic"
# Slicer's own packages: other extensions and Slicer itself depend on the exact builds it ships.
PROTECTED = ("numpy", "SimpleITK", "requests")
MINIMUM_BACKEND_PYTHON = (3, 10)  # the backend's requires-python; Slicer 5.10 bundles 3.12, Slicer 5.8 3.9
SHIPPED_SOURCE_FOLDER = "OrganDETRBackendSource"  # next to the module in an installed extension (CMakeLists.txt)
CONSTRAINTS_PLACEHOLDER = "<constraints file>"  # replaced by a file written right before pip runs


class InstallError(RuntimeError):
    """The plan cannot be carried out here; the message says why in one line."""


@dataclass(frozen=True)
class InstallStep:
    kind: str  # "pytorch-extension" | "pip"
    what: str
    reason: str
    pip_arguments: tuple[str, ...] = ()  # for slicer.util.pip_install, which adds "install" itself
    needs_torch: bool = False  # pip must find PyTorch installed (and pinned) before it runs


@dataclass(frozen=True)
class InstallPlan:
    steps: tuple[InstallStep, ...] = ()
    restart_required: bool = False
    notes: tuple[str, ...] = ()

    @property
    def nothing_to_do(self) -> bool:
        return not self.steps

    def summary(self) -> str:
        """Text for the one confirmation dialog."""
        if self.nothing_to_do:
            return "\n".join(["Everything OrganDETR needs is installed.", *self.notes])
        lines = ["OrganDETR needs:"]
        lines += [f"  - {step.what}: {step.reason}" for step in self.steps]
        lines += list(self.notes)
        if self.restart_required:
            lines.append("Slicer must be restarted afterwards.")
        return "\n".join(lines)


def installed_versions(names=(TORCH, PYDANTIC, *PROTECTED, BACKEND_DISTRIBUTION)) -> dict[str, str | None]:
    """Installed version of each distribution in this Python (None when absent)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def constraints_text(installed: Mapping[str, str | None]) -> str:
    """Pins for every protected package (and torch) that is present, so pip keeps them as they are."""
    return "".join(f"{name}=={installed[name]}\n" for name in (*PROTECTED, TORCH) if installed.get(name))


def find_backend_source(module_dir: Path) -> Path:
    """The backend source to install: shipped with the extension, or the repository a clone runs from."""
    for candidate in (module_dir / SHIPPED_SOURCE_FOLDER, module_dir.parent):
        pyproject = candidate / "pyproject.toml"
        if pyproject.is_file() and f'name = "{BACKEND_DISTRIBUTION}"' in pyproject.read_text(encoding="utf-8"):
            return candidate
    raise InstallError(f"the OrganDETR backend source is missing next to {module_dir}; reinstall the extension")


def _pip_step(what: str, reason: str, requirement: str, needs_torch: bool = False) -> InstallStep:
    arguments = ("--upgrade-strategy", "only-if-needed", "--constraint", CONSTRAINTS_PLACEHOLDER, requirement)
    return InstallStep("pip", what, reason, arguments, needs_torch)


def plan_installation(
    installed: Mapping[str, str | None],
    embedded: bool,
    backend_source: Path | None = None,
    backend_version: str | None = None,
    python_version: tuple[int, int] = sys.version_info[:2],
    already_imported: frozenset[str] = frozenset(),
) -> InstallPlan:
    """The steps that make remote mode (``embedded`` false) or the embedded backend runnable in this Python.

    ``backend_source`` is the folder pip installs the backend from and ``backend_version`` the version it holds;
    ``already_imported`` names modules loaded in the running Slicer: replacing one of those needs a restart.
    """
    steps: list[InstallStep] = []
    notes: list[str] = []
    if not installed.get(PYDANTIC):
        steps.append(_pip_step("pydantic", "a small wheel that reads and checks the result format", CLIENT_REQUIREMENT))
    if not embedded:
        return InstallPlan(tuple(steps))
    if python_version < MINIMUM_BACKEND_PYTHON:
        minimum = ".".join(str(part) for part in MINIMUM_BACKEND_PYTHON)
        raise InstallError(
            f"the embedded backend needs Python {minimum} or newer (Slicer 5.10 or later) and this Slicer has "
            f"Python {python_version[0]}.{python_version[1]}; use a remote server, or the Python of an environment "
            "where the backend is installed"
        )
    if not installed.get(TORCH):
        steps.append(
            InstallStep(
                "pytorch-extension",
                "PyTorch",
                "installed by Slicer's PyTorch extension, which chooses the CPU or GPU build for this computer",
            )
        )
    current = installed.get(BACKEND_DISTRIBUTION)
    needs_backend = current is None or (backend_version is not None and current != backend_version)
    if needs_backend:
        if backend_source is None:
            raise InstallError("the OrganDETR backend source is missing; reinstall the extension")
        steps.append(
            _pip_step(
                f"the OrganDETR backend {backend_version or ''}".rstrip(),
                f"installed with pip from {backend_source}; numpy, SimpleITK, requests and PyTorch are kept exactly "
                "as they are",
                str(backend_source),
                needs_torch=True,
            )
        )
        missing_protected = [name for name in PROTECTED if not installed.get(name)]
        if missing_protected:
            notes.append(f"Note: {', '.join(missing_protected)} missing from this Python; pip will add them.")
    restart = needs_backend and current is not None and BACKEND_IMPORT in already_imported
    return InstallPlan(tuple(steps), restart, tuple(notes))


def execute_plan(
    plan: InstallPlan,
    install_torch: Callable[[], None],
    run_pip: Callable[[list[str]], None],
    installed: Callable[[], Mapping[str, str | None]] = installed_versions,
) -> None:
    """Run the steps in order: ``install_torch`` is the PyTorch extension's installer, ``run_pip`` is
    ``slicer.util.pip_install`` (it adds "install" itself).

    The constraints are computed right before each pip run, after PyTorch is in place, so pip sees torch pinned and
    can never download one itself.
    """
    for step in plan.steps:
        if step.kind == "pytorch-extension":
            install_torch()
            continue
        versions = installed()
        if step.needs_torch and not versions.get(TORCH):
            raise InstallError("PyTorch is not installed; install it with the PyTorch extension first")
        descriptor, name = tempfile.mkstemp(prefix="organdetr-constraints-", suffix=".txt")
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(constraints_text(versions))
            run_pip([name if argument == CONSTRAINTS_PLACEHOLDER else argument for argument in step.pip_arguments])
        finally:
            Path(name).unlink(missing_ok=True)


def removal_requirements() -> list[str]:
    """What ``slicer.util.pip_uninstall`` removes (it adds "uninstall" and "--yes" itself). PyTorch is removed
    through the PyTorch extension; pydantic stays (other extensions may use it)."""
    return [BACKEND_DISTRIBUTION]
