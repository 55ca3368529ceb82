"""The one versioned result schema shared by the CLI, the HTTP service and the Slicer module.

Physical coordinates are LPS millimetres (the DICOM/ITK convention and Slicer's markups JSON default), stated in
every box. ``python -m organdetr_backend.schema`` regenerates the published JSON Schema file. Annotations use
``Optional`` because pydantic evaluates them at run time, and Slicer 5.8's Python 3.9 has no ``X | None``.
"""

from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_NAME = "organdetr.detection-result"
SCHEMA_VERSION = "1.1"
# Versions this code reads: 1.0 results (before presence) parse with the defaults of the presence fields.
READABLE_SCHEMA_VERSIONS = ("1.0", "1.1")

Vector3 = tuple[float, float, float]
Index3 = tuple[int, int, int]
Matrix3 = Annotated[list[float], Field(min_length=9, max_length=9)]
Source = Literal["model", "edited", "manual"]
BoxSource = Literal["query", "segmentation"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PhysicalBox(_Strict):
    """An oriented box in physical space."""

    coordinate_system: Literal["LPS"] = "LPS"
    units: Literal["mm"] = "mm"
    center: Vector3
    size: Annotated[tuple[float, float, float], Field(description="full edge lengths along the box axes")]
    orientation: Matrix3 = Field(
        description="row-major 3x3 rotation; its COLUMNS are the box axes as unit vectors in LPS"
    )


class VoxelBounds(_Strict):
    """Inclusive voxel index bounds in the input image's ITK index space (i, j, k)."""

    min_ijk: Index3
    max_ijk_inclusive: Index3


class Candidate(_Strict):
    """An alternative box for the same organ (a lower-ranked query), for annotators."""

    score: Annotated[float, Field(ge=0.0, le=1.0)]
    box: PhysicalBox
    voxel_bounds: Optional[VoxelBounds] = None


Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class Detection(_Strict):
    """One organ: the best query for its class."""

    label: str = Field(description="organ name from the model's class list")
    class_id: Annotated[int, Field(ge=1, description="label value of the organ in the model's label map")]
    score: Probability
    presence: Optional[Probability] = Field(
        default=None, description="probability that the organ is in the scan (None in results before version 1.1)"
    )
    present: bool = Field(
        default=True,
        description="presence >= the result's presence_threshold; false only when absent organs were requested too",
    )
    box: PhysicalBox
    voxel_bounds: Optional[VoxelBounds] = None
    source: Source = "model"
    box_source: BoxSource = Field(
        default="query",
        description="where the model's box came from: its best query, or the segmented organ that refined it",
    )
    candidates: list[Candidate] = Field(default_factory=list)


class AbsentOrgan(_Strict):
    """An organ of the model judged not to be in the scan (presence below the threshold)."""

    label: str
    class_id: Annotated[int, Field(ge=1)]
    presence: Probability


class ImageInfo(_Strict):
    """The input image's identity and geometry (ITK conventions: index order i, j, k; LPS)."""

    source: str
    shape: Index3
    spacing: Vector3
    origin: Vector3
    direction: Matrix3 = Field(description="row-major 3x3 direction cosines; columns are the index axes in LPS")
    coordinate_system: Literal["LPS"] = "LPS"
    sha256: str = Field(description="hash of the voxel data and geometry")


class ModelInfo(_Strict):
    name: str
    version: str
    weights_sha256: str
    classes: list[str]


class Timing(_Strict):
    """Wall-clock seconds per stage."""

    read_s: float = 0.0
    preprocess_s: float = 0.0
    network_s: float = 0.0
    decode_s: float = 0.0
    total_s: float = 0.0


class DetectionResult(_Strict):
    """The result of detecting organs in one image."""

    schema_name: Literal["organdetr.detection-result"] = SCHEMA_NAME
    schema_version: Literal["1.0", "1.1"] = SCHEMA_VERSION
    image: ImageInfo
    model: ModelInfo
    device: str
    timing: Timing = Field(default_factory=Timing)
    detections: list[Detection] = Field(
        description="the organs judged present (and, on request, the absent ones with present=false)"
    )
    presence_threshold: Probability = Field(default=0.5, description="presence probability at which an organ counts")
    absent: list[AbsentOrgan] = Field(
        default_factory=list, description="organs of the model judged not to be in the scan, with their probability"
    )


def json_schema() -> dict:
    """The published JSON Schema of :class:`DetectionResult`."""
    schema = DetectionResult.model_json_schema()
    schema["$id"] = f"https://organdetr.github.io/schema/{SCHEMA_NAME}-{SCHEMA_VERSION}.json"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
