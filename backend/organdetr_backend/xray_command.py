"""``organdetr xray``: X-ray views of a CT and 3D organ boxes from 2D boxes in several views (MV2D foundation).

* ``organdetr xray render CT -o VIEWS_DIR [--views N --arc DEG --size PX ...] [--label LABEL --boxes2d FILE]``
  renders digitally reconstructed radiographs of any CT ``organdetr detect`` reads into a views folder (one image per
  view + ``views.json``, :mod:`organdetr.xray.views_file`); with a label map it also writes every organ's true
  silhouette box per view.
* ``organdetr xray carve VIEWS_DIR --boxes2d FILE [-o result.json]`` intersects the back-projected 2D boxes
  (:mod:`organdetr.xray.carving`) and writes one 3D box per organ in the result schema (LPS mm of the frame that
  ``views.json`` defines; on the CT's grid when the views say which CT they show), organs that cannot be carved
  as absent.
* ``organdetr xray detect VIEWS_DIR -o result.json [--model DIR]`` runs a trained MV2D model (2D detections in every
  view lifted to 3D queries, :mod:`organdetr.xray.mv2d`) and writes one 3D box per organ in the same schema, with its
  presence; ``--boxes2d`` also writes the view detector's 2D boxes (which ``carve`` reads).
* ``organdetr xray train --data dataset.json --output RUN`` trains one (:mod:`organdetr.xray.training`) on scenes
  rendered from the training cases (cached with ``--cache-dir``), resumable with ``--resume``.
* ``organdetr xray evaluate --data dataset.json [--model DIR]`` scores it on the validation cases with 10, 5, 3 and 2
  views beside carving from its own 2D boxes and the mean-box prior (:mod:`organdetr.xray.evaluation`).

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
from organdetr_client.same_grid import grid_differences

from . import __version__
from .threads import THREADS_HELP

if TYPE_CHECKING:
    from .schema import ImageInfo, ModelInfo, Timing

CARVING_MODEL_NAME = "xray-carving"
MV2D_MODEL_NAME = "xray-mv2d"


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

    detect = commands.add_parser(
        "detect", help="3D organ boxes from the views by a trained MV2D model", description=_detect.__doc__
    )
    detect.add_argument("views", help="views folder (views.json + images)")
    detect.add_argument("-o", "--output", help="result JSON file (default: stdout)")
    detect.add_argument("--model", help="trained X-ray model folder (default: the shipped xray-mv2d-small)")
    detect.add_argument("--boxes2d", help="also write the view detector's 2D boxes here (boxes2d.json)")
    detect.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    detect.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    detect.set_defaults(xray_run=_detect)

    train = commands.add_parser("train", help="train an MV2D model on rendered scenes", description=_train.__doc__)
    train.add_argument("--data", required=True, help="dataset.json with training and validation cases")
    train.add_argument("--output", required=True, help="run folder (last/, best/, history.json, curves)")
    train.add_argument("--preset", default="small", help="small (default) or test")
    train.add_argument("--cache-dir", help="keep rendered scenes here (reused by later runs and --resume)")
    train.add_argument("--steps", type=int, help="length of the learning-rate schedule (default: the preset's)")
    train.add_argument("--max-steps", type=int, help="stop at this step (resumable); default: the schedule's end")
    train.add_argument("--time-limit-minutes", type=float, help="stop after this long (resumable)")
    train.add_argument("--dense-lambda", type=float, help="Dense Query Matching lambda; 0 = one-to-one matching")
    train.add_argument(
        "--no-feature-selection", action="store_true", help="let every query attend to every view's cells"
    )
    train.add_argument("--seed", type=int, help="seed of initialisation and batch drawing (default: the preset's)")
    train.add_argument("--resume", action="store_true", help="continue the run in --output from last/")
    train.set_defaults(xray_run=_train)

    evaluate = commands.add_parser(
        "evaluate", help="score an MV2D model on the validation cases", description=_evaluate.__doc__
    )
    evaluate.add_argument("--data", required=True, help="dataset.json with training and validation cases")
    evaluate.add_argument("--model", help="trained X-ray model folder (default: the shipped xray-mv2d-small)")
    evaluate.add_argument("--cache-dir", help="rendered scenes cache (the one training used saves rendering)")
    evaluate.add_argument("--views", default="10,5,3,2", help="view counts to evaluate (default 10,5,3,2)")
    evaluate.add_argument("-o", "--output", help="write the figures as JSON")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    evaluate.set_defaults(xray_run=_evaluate)
    # --threads also after the sub-command; SUPPRESS keeps `xray --threads N` working.
    for command in (render, carve, detect, train, evaluate):
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
        differences = grid_differences(loaded.image, label)
        if differences:
            detail = "; ".join(differences)
            raise UserInputError(f"{Path(args.label).name}: label map grid differs from the CT's ({detail})")
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


def _result_grid(views_folder: Path, views) -> tuple[ImageInfo, np.ndarray, np.ndarray]:
    """The grid results refer to and the world region organs may lie in: the CT the views name, else a 1 mm grid
    over the field every view sees."""
    from organdetr.xray.carving import field_of_view_cube

    if views.volume is not None:
        low, high = _grid_region(_InfoGrid(views.volume))
        return views.volume, low, high
    low, high = field_of_view_cube(views.cameras, views.isocenter)
    return _field_grid(views_folder, low, high), low, high


def _write_result(
    args: argparse.Namespace,
    info: ImageInfo,
    model: ModelInfo,
    boxes: np.ndarray,
    scores: np.ndarray,
    presence: np.ndarray,
    threshold: float,
    timing: Timing,
    device: str = "cpu",
) -> None:
    """One box per organ (centre-size, world LPS mm, ``[K, 6]``) in the result schema: organs whose presence is
    below ``threshold`` or that have no finite box are listed as absent."""
    from organdetr_client.box_geometry import physical_box_to_voxel_bounds

    from .export import write_result_json
    from .schema import AbsentOrgan, Detection, DetectionResult, PhysicalBox

    detections, absent = [], []
    for k, name in enumerate(model.classes):
        if presence[k] < threshold or not np.isfinite(boxes[k]).all():
            absent.append(AbsentOrgan(label=name, class_id=k + 1, presence=float(presence[k])))
            continue
        box = PhysicalBox(
            center=tuple(float(v) for v in boxes[k, :3]),
            size=tuple(float(v) for v in boxes[k, 3:]),
            orientation=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        )
        detections.append(
            Detection(
                label=name,
                class_id=k + 1,
                score=float(scores[k]),
                presence=float(presence[k]),
                box=box,
                voxel_bounds=physical_box_to_voxel_bounds(box, _InfoGrid(info)),
            )
        )
    result = DetectionResult(
        image=info,
        model=model,
        device=device,
        timing=timing,
        detections=detections,
        presence_threshold=threshold,
        absent=absent,
    )
    if args.output is None:
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    else:
        write_result_json(result, args.output, overwrite=args.overwrite)


def _carve(args: argparse.Namespace) -> int:
    """Carve each organ's 3D box from its 2D boxes in the views; write it in the result schema (LPS mm)."""
    from organdetr.xray.boxes2d_file import read_boxes2d
    from organdetr.xray.carving import carve_boxes
    from organdetr.xray.views_file import read_views

    from .output_file import check_writable
    from .schema import ModelInfo, Timing

    started = time.perf_counter()
    if args.output is not None:
        check_writable(Path(args.output), args.overwrite)
    views_folder = Path(args.views)
    views = read_views(views_folder)
    boxes = read_boxes2d(args.boxes2d, len(views.cameras))
    info, low, high = _result_grid(views_folder, views)
    read_s = time.perf_counter() - started
    carved = carve_boxes(views.cameras, boxes.boxes, low, high)
    carve_s = time.perf_counter() - started - read_s
    carved_any = np.isfinite(carved).all(axis=1)
    seen = np.isfinite(boxes.scores).any(axis=0)
    scores = np.where(seen, np.nanmean(np.where(seen, boxes.scores, 0.0), axis=0), 0.0)
    model = ModelInfo(
        name=CARVING_MODEL_NAME,
        version=__version__,
        weights_sha256=hashlib.sha256(Path(args.boxes2d).read_bytes()).hexdigest(),  # no weights: the 2D boxes
        classes=list(boxes.class_names),
    )
    timing = Timing(read_s=read_s, decode_s=carve_s, total_s=time.perf_counter() - started)
    _write_result(args, info, model, carved, scores, carved_any.astype(float), 0.5, timing)
    return 0


def _detect(args: argparse.Namespace) -> int:
    """Detect each organ's 3D box from X-ray views with a trained MV2D model; write it in the result schema (LPS
    mm of the frame views.json defines), organs the model judges absent listed as such."""
    import torch
    from organdetr.inference import select_device
    from organdetr.xray.boxes2d_file import Boxes2D, write_boxes2d
    from organdetr.xray.inference import predict_views
    from organdetr.xray.model_file import load_model
    from organdetr.xray.views_file import read_views

    from .output_file import check_writable
    from .schema import ModelInfo, Timing

    started = time.perf_counter()
    for output in (args.output, args.boxes2d):
        if output is not None:
            check_writable(Path(output), args.overwrite)
    device = select_device(args.device)
    loaded = load_model(args.model, device)
    views_folder = Path(args.views)
    views = read_views(views_folder)
    info, _, _ = _result_grid(views_folder, views)
    read_s = time.perf_counter() - started
    prediction = predict_views(loaded.model, loaded.config, views)
    if device.type == "cuda":
        torch.cuda.synchronize()
    network_s = time.perf_counter() - started - read_s
    model = ModelInfo(
        name=MV2D_MODEL_NAME,
        version=__version__,
        weights_sha256=loaded.weights_sha256,
        classes=list(loaded.config.class_names),
    )
    timing = Timing(read_s=read_s, network_s=network_s, total_s=time.perf_counter() - started)
    scores = prediction.scores.astype(float)
    threshold = loaded.config.presence_threshold
    _write_result(args, info, model, prediction.boxes3d, scores, scores, threshold, timing, device.type)
    if args.boxes2d is not None:
        names = loaded.config.class_names
        write_boxes2d(args.boxes2d, Boxes2D(names, prediction.boxes2d.astype(float), prediction.scores2d.astype(float)))
    return 0


def _positive(value: float | None, option: str) -> None:
    from organdetr.errors import UserInputError

    if value is not None and not value > 0:
        raise UserInputError(f"{option} must be positive")


def _train(args: argparse.Namespace) -> int:
    """Train an MV2D model (2D view detector + 3D queries, transformer decoder, 3D box head) on X-ray scenes
    rendered from a dataset.json's training cases; validated on its validation cases; resumable."""
    from dataclasses import replace

    from organdetr.errors import UserInputError
    from organdetr.xray.training import RunLimits, XrayTrainer
    from organdetr.xray.training_config import preset

    for value, option in ((args.steps, "--steps"), (args.max_steps, "--max-steps")):
        _positive(value, option)
    _positive(args.time_limit_minutes, "--time-limit-minutes")
    config = preset(args.preset)
    changes = (args.steps, args.seed, args.dense_lambda)
    if args.resume and (any(change is not None for change in changes) or args.no_feature_selection):
        raise UserInputError("--resume continues the run as it was configured; drop --steps, --seed and the ablations")
    if args.steps is not None:
        config = replace(config, max_steps=args.steps)
    if args.seed is not None:
        config = replace(config, seed=args.seed)
    if args.dense_lambda is not None:
        if not 0.0 <= args.dense_lambda < 1.0:
            raise UserInputError("--dense-lambda must be in [0, 1)")
        config = replace(config, matcher=replace(config.matcher, dense_lambda=args.dense_lambda))
    if args.no_feature_selection:
        config = replace(config, model=replace(config.model, feature_selection=False))
    cache = Path(args.cache_dir) if args.cache_dir is not None else None
    log = lambda line: print(line, flush=True)  # noqa: E731
    trainer = XrayTrainer(config, Path(args.data), Path(args.output), cache, args.resume, log)
    time_limit = None if args.time_limit_minutes is None else 60.0 * args.time_limit_minutes
    trainer.train(RunLimits(max_steps=args.max_steps, time_limit_s=time_limit))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    """Score a trained MV2D model on the validation cases of a dataset.json (shifted isocentres, the model's own
    predicted 2D boxes) beside carving from those 2D boxes and the mean-box prior, for several view counts."""
    import json
    from dataclasses import replace

    from organdetr.atomic_file import write_new_text
    from organdetr.dataset import load_dataset_json
    from organdetr.errors import UserInputError
    from organdetr.xray.evaluation import VIEW_SETTINGS, evaluate_scenes, summary_line, view_setting
    from organdetr.xray.model_file import load_model
    from organdetr.xray.prior import MeanBoxPrior
    from organdetr.xray.scenes import SceneCache
    from organdetr.xray.training_data import load_scenes

    from .output_file import check_writable

    settings = {views: arc for views, arc in VIEW_SETTINGS}
    try:
        counts = [int(v) for v in args.views.split(",")]
    except ValueError:
        counts = []
    if not counts or any(count not in settings for count in counts):
        raise UserInputError(f"--views must be a comma-separated choice of {', '.join(map(str, settings))}")
    if args.output is not None:
        check_writable(Path(args.output), args.overwrite)
    loaded = load_model(args.model)
    config = loaded.config
    description = load_dataset_json(args.data, ("training", "validation"))
    if description.class_names != config.class_names:
        raise UserInputError(f"{args.data}: classes {description.class_names} differ from the model's")
    cache_dir = Path(args.cache_dir) if args.cache_dir is not None else None
    # The prior needs the training scenes' boxes only: geometry without pixels (the same draws as training's).
    geometry_only = SceneCache(config.class_names, replace(config.scenes, render=False), cache_dir)
    prior = MeanBoxPrior.fit(
        config.class_names, load_scenes(description.splits["training"], geometry_only, config.scenes_per_case)
    )
    results = []
    for count in counts:
        cache = SceneCache(config.class_names, view_setting(config, count, settings[count]), cache_dir)
        scenes = load_scenes(description.splits["validation"], cache, 1)
        figures = evaluate_scenes(loaded.model, scenes, config.class_names, prior)
        print(f"{count} views ({settings[count]:g} deg arc), {len(scenes)} validation scenes")
        for name in ("mv2d", "carving_predicted_2d", "mean_box_prior"):
            print("  " + summary_line(name, figures[name]))
        print(f"  view detector 2D AP50 {figures['view_detector_2d']['AP50']:.3f}")
        results.append({"views": count, "arc_deg": settings[count], **figures})
    if args.output is not None:
        document = {"model": loaded.directory.name, "weights_sha256": loaded.weights_sha256, "results": results}
        write_new_text(args.output, json.dumps(document, indent=1) + "\n", overwrite=args.overwrite)
    return 0
