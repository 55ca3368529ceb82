"""The installed (shipped) models and the names ``--model`` accepts for them.

A shipped model is a checkpoint folder under ``organdetr/pretrained/``; the default one is
:data:`organdetr.checkpoint.DEFAULT_MODEL_DIR`. ``--model`` takes a checkpoint folder, ``default`` or ``shipped`` (the
default model), or an installed model's folder name (``openkbp-small``) or its full name
(``organdetr-openkbp-small``). Anything else is refused with the list of valid names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from organdetr.checkpoint import CONFIG_FILE, DEFAULT_MODEL_DIR, DEFAULT_MODEL_NAME, WEIGHTS_FILE
from organdetr.config import DetectorConfig
from organdetr.errors import UserInputError

PRETRAINED_DIR = DEFAULT_MODEL_DIR.parent
DEFAULT_ALIASES = (DEFAULT_MODEL_NAME, "shipped")


@dataclass(frozen=True)
class InstalledModel:
    """A model folder shipped with the package."""

    name: str  # the folder name, e.g. openkbp-small
    full_name: str  # the name in its config.json and in results, e.g. organdetr-openkbp-small
    version: str
    classes: tuple[str, ...]
    directory: Path
    default: bool

    def names(self) -> tuple[str, ...]:
        """Every name ``--model`` accepts for this model."""
        return (*(DEFAULT_ALIASES if self.default else ()), self.name, self.full_name)


def installed_models() -> list[InstalledModel]:
    """Every complete checkpoint folder under the package's ``pretrained/`` folder, the default one first."""
    models = []
    folders = sorted(PRETRAINED_DIR.iterdir()) if PRETRAINED_DIR.is_dir() else []
    for folder in folders:
        if not ((folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()):
            continue
        config = DetectorConfig.from_json_file(folder / CONFIG_FILE)
        models.append(
            InstalledModel(
                name=folder.name,
                full_name=config.name,
                version=config.version,
                classes=tuple(config.class_names),
                directory=folder.resolve(),
                default=folder.resolve() == DEFAULT_MODEL_DIR.resolve(),
            )
        )
    return sorted(models, key=lambda model: not model.default)


def resolve_model(reference: str | Path | None) -> Path | None:
    """The checkpoint folder for ``reference`` (None stays None: the checkpoint loader's default model).

    An existing path is returned as it is (the loader explains what is wrong with it, if anything).
    """
    if reference is None or Path(reference).expanduser().exists():
        return None if reference is None else Path(reference).expanduser()
    models = installed_models()
    for model in models:
        if str(reference) in model.names():
            return model.directory
    valid = "; ".join(" / ".join(model.names()) for model in models) or "none installed"
    raise UserInputError(
        f"model {reference!s}: no such folder and no installed model of that name (installed: {valid}; "
        "see 'organdetr models')"
    )
