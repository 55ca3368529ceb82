"""What the first use of the embedded backend installs into Slicer's Python, as a plan that can be shown and tested.

Rules (Slicer extension index): torch only through Slicer's PyTorch extension (PyTorchUtils picks the CPU or CUDA
build for the computer), never with pip; the backend package with pip, constrained to the numpy, SimpleITK and
torch already installed so that pip can never replace them (it fails with a message instead); removable again.
The functions here only compute; the module's logic executes the plan after the user confirmed it.
"""

from __future__ import annotations

import importlib.metadata
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

BACKEND_DISTRIBUTION = "organdetr"
TORCH = "torch"
# Slicer's own packages: other extensions and Slicer itself depend on the exact builds it ships.
PROTECTED = ("numpy", "SimpleITK")
CONSTRAINTS_PLACEHOLDER = "<constraints file>"  # replaced by a file written right before pip runs


@dataclass(frozen=True)
class InstallStep:
    kind: str  # "pytorch-extension" | "pip"
    what: str
    reason: str
    pip_arguments: tuple[str, ...] = ()


@dataclass(frozen=True)
class InstallPlan:
    steps: tuple[InstallStep, ...] = ()
    restart_required: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def nothing_to_do(self) -> bool:
        return not self.steps

    def summary(self) -> str:
        """Text for the one confirmation dialog."""
        if self.nothing_to_do:
            return "Everything the embedded backend needs is installed."
        lines = ["The embedded OrganDETR backend needs:"]
        lines += [f"  - {step.what}: {step.reason}" for step in self.steps]
        lines += list(self.notes)
        if self.restart_required:
            lines.append("Slicer must be restarted afterwards.")
        return "\n".join(lines)


def installed_versions(names=(TORCH, *PROTECTED, BACKEND_DISTRIBUTION)) -> dict[str, str | None]:
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


def plan_installation(
    installed: Mapping[str, str | None],
    backend_requirement: str = BACKEND_DISTRIBUTION,
    backend_version: str | None = None,
    already_imported: frozenset[str] = frozenset(),
) -> InstallPlan:
    """The steps to make the embedded backend runnable, from what is installed now.

    ``backend_requirement`` is what pip installs (a name, wheel path or URL); ``backend_version`` the version this
    module needs (None: any). ``already_imported`` names modules loaded in the running Slicer: replacing one of those
    needs a restart.
    """
    steps: list[InstallStep] = []
    notes: list[str] = []
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
        arguments = ("install", "--upgrade-strategy", "only-if-needed", "--constraint", CONSTRAINTS_PLACEHOLDER)
        steps.append(
            InstallStep(
                "pip",
                f"the OrganDETR backend ({backend_requirement})",
                "installed with pip; numpy, SimpleITK and PyTorch are kept exactly as they are",
                (*arguments, backend_requirement),
            )
        )
        missing_protected = [name for name in PROTECTED if not installed.get(name)]
        if missing_protected:
            notes.append(f"Note: {', '.join(missing_protected)} missing from this Python; pip will add them.")
    restart = needs_backend and current is not None and "organdetr_backend" in already_imported
    return InstallPlan(tuple(steps), restart, tuple(notes))


def removal_pip_arguments() -> tuple[str, ...]:
    """pip arguments that remove what the plan installed (PyTorch is removed through the PyTorch extension)."""
    return ("uninstall", "--yes", BACKEND_DISTRIBUTION)


def execute_plan(
    plan: InstallPlan,
    install_torch: Callable[[], None],
    run_pip: Callable[[list[str]], None],
) -> None:
    """Run the steps in order: ``install_torch`` is the PyTorch extension's installer, ``run_pip`` Slicer's pip.

    The constraints are computed right before pip runs, after PyTorch is in place, so pip sees torch pinned and can
    never download one itself.
    """
    for step in plan.steps:
        if step.kind == "pytorch-extension":
            install_torch()
            continue
        installed = installed_versions()
        if not installed.get(TORCH):
            raise RuntimeError("PyTorch is not installed; install it with the PyTorch extension first")
        descriptor, name = tempfile.mkstemp(prefix="organdetr-constraints-", suffix=".txt")
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(constraints_text(installed))
            arguments = [name if argument == CONSTRAINTS_PLACEHOLDER else argument for argument in step.pip_arguments]
            run_pip(arguments)
        finally:
            Path(name).unlink(missing_ok=True)
