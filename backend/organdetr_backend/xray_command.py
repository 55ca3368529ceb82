"""``organdetr xray``: X-ray views of a CT and 3D organ boxes from 2D boxes in several views (MV2D foundation).

* ``organdetr xray render CT -o VIEWS_DIR [--views N --arc DEG --size PX ...] [--label LABEL --boxes2d FILE]``
  renders digitally reconstructed radiographs of any CT ``organdetr detect`` reads into a views folder (one image per
  view + ``views.json``, :mod:`organdetr.xray.views_file`); with a label map it also writes every organ's true
  silhouette box per view.
* ``organdetr xray carve VIEWS_DIR --boxes2d FILE [-o result.json]`` intersects the back-projected 2D boxes
  (:mod:`organdetr.xray.carving`) and writes one 3D box per organ in the result schema (LPS mm of the frame that
  ``views.json`` defines; on the CT's grid when the views say which CT they show), organs that cannot be carved
  as absent.

Bad input is one line on stderr and exit status 2; outputs are written atomically and never replace an existing
file or folder without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import __version__
from .threads import THREADS_HELP

if TYPE_CHECKING:
    from .schema import ImageInfo

CARVING_MODEL_NAME = "xray-carving"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="xray_command", required=True, metavar="XRAY_COMMAND")
    render = commands.add_parser("render", help="render X-ray views of a CT", description=_render.__doc__)
    render.add_argument("ct", help="CT volume file, DICOM folder or .zip of one")
    render.add_argument("-o", "--output", required=True, help="views folder to create")
    render.add_argument("--views", type=int, default=10, help="number of views (default 10)")
    render.add_argument("--arc", type=float, default=360.0, help="arc the views span, degrees (default 360)")
    render.add_argument("--start-angle", type=float, default=0.0, help="angle of the first view, degrees (0 = AP)")
    render.add_argument("--size", type=int, default=128, help="detector pixels per side (default 128)")
    render.add_argument(
        "--pixel-spacing", type=float, default=None, help="detector pixel size, mm (default: a 640 mm detector / size)"
    )
    render.add_argument("--sid", type=float, default=750.0, help="source-to-isocentre distance, mm (default 750)")
    render.add_argument("--sdd", type=float, default=1200.0, help="source-to-detector distance, mm (default 1200)")
    point = ("X", "Y", "Z")
    render.add_argument("--isocenter", type=float, nargs=3, metavar=point, help="LPS mm (default: the scan's centre)")
    render.add_argument(
        "--shift", type=float, nargs=3, default=(0.0, 0.0, 0.0), metavar=point, help="move the isocentre (LPS mm)"
    )
    render.add_argument("--label", help="label map of the CT: also write the organs' true silhouette boxes")
    render.add_argument("--boxes2d", help="where --label's silhouette boxes go (boxes2d.json)")
    render.add_argument("--classes", help="comma-separated organ names of label values 1, 2, ... (default: OpenKBP)")
    render.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    render.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    render.set_defaults(xray_run=_render)

    carve = commands.add_parser("carve", help="3D organ boxes from 2D boxes in the views", description=_carve.__doc__)
    carve.add_argument("views", help="views folder (views.json + images)")
    carve.add_argument("--boxes2d", required=True, help="2D boxes per view (boxes2d.json)")
    carve.add_argument("-o", "--output", help="result JSON file (default: stdout)")
    carve.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    carve.set_defaults(xray_run=_carve)
    for command in (render, carve):  # given after the sub-command too; SUPPRESS keeps `xray --threads N` working
        command.add_argument("--threads", type=int, default=argparse.SUPPRESS, help=THREADS_HELP)


def run(args: argparse.Namespace) -> int:
    return args.xray_run(args)


def _class_names(text: str | None) -> tuple[str, ...]:
    from organdetr.config import DetectorConfig
    from organdetr.errors import UserInputError

    if text is None:
        return DetectorConfig.class_names
    names = tuple(name.strip() for name in text.split(","))
    if not all(names) or len(set(names)) != len(names):
        raise UserInputError("--classes must be distinct, non-empty, comma-separated names")
    return names


def _render(args: argparse.Namespace) -> int:
    """Render X-ray views (line integrals) of a CT from a C-arm rotating about the head-foot axis."""
    from organdetr.errors import UserInputError
    from organdetr.inference import select_device
    from organdetr.xray.boxes2d_file import Boxes2D, write_boxes2d
    from organdetr.xray.camera import CArmGeometry
    from organdetr.xray.render import AttenuationVolume, render_views
    from organdetr.xray.scenes import organ_corners, scan_centre
    from organdetr.xray.silhouettes import silhouette_boxes
    from organdetr.xray.views_file import ViewSet, check_views_output, write_views

    from .image_io import image_info, read_image
    from .output_file import check_writable

    if (args.label is None) != (args.boxes2d is None):
        raise UserInputError("--label and --boxes2d go together")
    output = Path(args.output)
    check_views_output(output, args.overwrite)
    if args.boxes2d is not None:
        check_writable(Path(args.boxes2d), args.overwrite)
    class_names = _class_names(args.classes)
    device = select_device(args.device)
    loaded = read_image(args.ct)
    centre = np.array(args.isocenter) if args.isocenter is not None else scan_centre(loaded.image)
    geometry = CArmGeometry(
        num_views=args.views,
        arc_deg=args.arc,
        start_angle_deg=args.start_angle,
        source_to_isocenter_mm=args.sid,
        source_to_detector_mm=args.sdd,
        rows=args.size,
        columns=args.size,
        pixel_spacing_mm=args.pixel_spacing if args.pixel_spacing is not None else 640.0 / args.size,
        isocenter=tuple(float(v) for v in centre + np.array(args.shift)),
    )
    cameras = geometry.cameras()
    boxes = None
    if args.label is not None:
        label = read_image(args.label).image
        same_grid = all(
            np.allclose(getattr(label, name)(), getattr(loaded.image, name)(), atol=1e-4)
            for name in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection")
        )
        if not same_grid:
            raise UserInputError(f"{Path(args.label).name}: label map grid differs from the CT's")
        corners = organ_corners(label, len(class_names))
        silhouettes = np.stack([silhouette_boxes(cameras, c) for c in corners], axis=1)
        boxes = Boxes2D(class_names, silhouettes, np.where(np.isfinite(silhouettes[..., 0]), 1.0, np.nan))
    volume = AttenuationVolume.from_image(loaded.image, device)
    images = render_views(volume, cameras).cpu()
    angles = [float(a) for a in geometry.angles_deg]
    views = ViewSet(cameras, images, np.asarray(geometry.isocenter), image_info(loaded), geometry, angles)
    write_views(output, views, overwrite=args.overwrite)
    if boxes is not None:
        write_boxes2d(args.boxes2d, boxes)
    return 0


@dataclass(frozen=True)
class _InfoGrid:
    """An :class:`organdetr_client.image_geometry.ImageGrid` described by the result schema's ImageInfo."""

    info: ImageInfo

    # ITK's method names: what an ImageGrid answers.
    def GetSize(self) -> tuple[int, int, int]:
        return self.info.shape

    def GetSpacing(self) -> tuple[float, float, float]:
        return self.info.spacing

    def GetOrigin(self) -> tuple[float, float, float]:
        return self.info.origin

    def GetDirection(self) -> list[float]:
        return self.info.direction


def _grid_region(grid: _InfoGrid) -> tuple[np.ndarray, np.ndarray]:
    """World-axis box around a grid's outer voxel edges."""
    from organdetr_client.image_geometry import index_to_physical_matrix

    edges = [(-0.5, size - 0.5) for size in grid.GetSize()]
    corners = np.array([[*corner, 1.0] for corner in itertools.product(*edges)])
    world = (index_to_physical_matrix(grid) @ corners.T).T[:, :3]
    return world.min(axis=0), world.max(axis=0)


def _field_grid(views_folder: Path, low: np.ndarray, high: np.ndarray) -> ImageInfo:
    """ImageInfo of a 1 mm grid over the carving region, for views that do not name their CT."""
    from .schema import ImageInfo

    spacing = 1.0
    shape = tuple(int(v) for v in np.maximum(np.ceil((high - low) / spacing), 2))
    views_json = (views_folder / "views.json").read_bytes()
    return ImageInfo(
        source=views_folder.name or str(views_folder),
        shape=shape,
        spacing=(spacing,) * 3,
        origin=tuple(float(v) for v in low + spacing / 2),
        direction=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        sha256=hashlib.sha256(views_json).hexdigest(),
    )


def _carve(args: argparse.Namespace) -> int:
    """Carve each organ's 3D box from its 2D boxes in the views; write it in the result schema (LPS mm)."""
    from organdetr.xray.boxes2d_file import read_boxes2d
    from organdetr.xray.carving import carve_boxes, field_of_view_cube
    from organdetr.xray.views_file import read_views
    from organdetr_client.box_geometry import physical_box_to_voxel_bounds

    from .export import write_result_json
    from .output_file import check_writable
    from .schema import AbsentOrgan, Detection, DetectionResult, ModelInfo, PhysicalBox, Timing

    started = time.perf_counter()
    if args.output is not None:
        check_writable(Path(args.output), args.overwrite)
    views_folder = Path(args.views)
    views = read_views(views_folder)
    boxes = read_boxes2d(args.boxes2d, len(views.cameras))
    if views.volume is not None:
        info = views.volume
        low, high = _grid_region(_InfoGrid(info))
    else:
        low, high = field_of_view_cube(views.cameras, views.isocenter)
        info = _field_grid(views_folder, low, high)
    read_s = time.perf_counter() - started
    carved = carve_boxes(views.cameras, boxes.boxes, low, high)
    carve_s = time.perf_counter() - started - read_s
    detections, absent = [], []
    for k, name in enumerate(boxes.class_names):
        if not np.isfinite(carved[k]).all():
            absent.append(AbsentOrgan(label=name, class_id=k + 1, presence=0.0))
            continue
        box = PhysicalBox(
            center=tuple(float(v) for v in carved[k, :3]),
            size=tuple(float(v) for v in carved[k, 3:]),
            orientation=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        )
        score = float(np.nanmean(boxes.scores[:, k]))
        detections.append(
            Detection(
                label=name,
                class_id=k + 1,
                score=score,
                presence=1.0,
                box=box,
                voxel_bounds=physical_box_to_voxel_bounds(box, _InfoGrid(info)),
            )
        )
    result = DetectionResult(
        image=info,
        model=ModelInfo(
            name=CARVING_MODEL_NAME,
            version=__version__,
            weights_sha256=hashlib.sha256(Path(args.boxes2d).read_bytes()).hexdigest(),  # no weights: the 2D boxes
            classes=list(boxes.class_names),
        ),
        device="cpu",
        timing=Timing(read_s=read_s, decode_s=carve_s, total_s=time.perf_counter() - started),
        detections=detections,
        absent=absent,
    )
    if args.output is None:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    else:
        write_result_json(result, args.output, overwrite=args.overwrite)
    return 0
