"""Export the boxes of a volume (our JSON, Slicer .mrk.json, CSV) and import our JSON back onto a volume.

Writers are the client's (organdetr_client.export): atomic, and they refuse to overwrite unless asked. An import is
validated completely (schema, organ names, and that the result's image geometry is this volume's grid) before the
scene is touched, so a refused file leaves the scene exactly as it was.
"""

from __future__ import annotations

from pathlib import Path

from organdetr_client.errors import UserInputError
from organdetr_client.export import read_result_json, write_csv, write_markups, write_result_json
from organdetr_client.same_grid import grid_differences
from organdetr_client.schema import DetectionResult

from .roi_nodes import create_rois, rois_to_result
from .volume_geometry import VolumeGeometry, volume_geometry

# File name ending -> writer; ".mrk.json" must be tested before ".json".
EXPORT_FORMATS = ((".mrk.json", write_markups), (".json", write_result_json), (".csv", write_csv))


def export_format(path: str | Path):
    """The writer for a file name, by its ending."""
    name = Path(path).name.lower()
    for ending, writer in EXPORT_FORMATS:
        if name.endswith(ending):
            return writer
    endings = ", ".join(ending for ending, _ in EXPORT_FORMATS)
    raise UserInputError(f"{Path(path).name}: unknown export format; use a file name ending in {endings}")


def with_export_ending(path: str | Path, name_filter: str = "") -> Path:
    """The file name with the ending of the chosen file-dialog filter (e.g. "CSV (*.csv)") added when it has none of
    the known endings, so a name typed without extension still exports."""
    path = Path(path)
    name = path.name.lower()
    if any(name.endswith(ending) for ending, _ in EXPORT_FORMATS):
        return path
    endings = [ending for ending, _ in EXPORT_FORMATS if f"*{ending})" in name_filter]
    return path.with_name(path.name + (endings[0] if endings else ".json"))


def export_boxes(scene, volume_node, path: str | Path, overwrite: bool = False) -> Path:
    """Write the volume's current boxes (with source flags and the input's geometry) in the format of the name."""
    writer = export_format(path)
    return writer(rois_to_result(scene, volume_node), path, overwrite=overwrite)


def check_result_matches_volume(result: DetectionResult, volume_node, name: str = "result") -> None:
    """Refuse (UserInputError) a result computed on an image whose voxels are not the volume's voxels."""
    problems = grid_differences(volume_geometry(volume_node), VolumeGeometry.from_image_info(result.image))
    if problems:
        raise UserInputError(
            f"{name} was computed on a different image than '{volume_node.GetName()}' "
            f"({'; '.join(problems)}); select the matching volume"
        )


def import_boxes(scene, volume_node, path: str | Path) -> list:
    """Recreate the boxes of a result JSON on the volume (replacing its previous boxes); nothing changes on error."""
    result = read_result_json(path)
    check_result_matches_volume(result, volume_node, Path(path).name)
    return create_rois(scene, volume_node, result, replace=True)
