"""The one predictor behind the CLI, the HTTP service and (through the service) the Slicer module.

Data flows one way: ``LoadedImage -> preprocess (the checkpoint's PreprocessConfig) -> network + query decoding ->
boxes mapped back to the ORIGINAL image (geometry) -> DetectionResult``. The network is loaded once per
:class:`Predictor`; a predictor runs one image at a time (the server's job queue serialises calls per device).
"""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from organdetr.checkpoint import load_checkpoint
from organdetr.inference import InferenceOutput, run_detector, select_device
from organdetr.preprocess import PreprocessedVolume, network_to_physical_matrix, preprocess_image

from .ct_content import check_ct_content
from .geometry import network_box_to_image
from .image_io import LoadedImage, image_info
from .organ_selection import check_organ_names
from .schema import AbsentOrgan, Candidate, Detection, DetectionResult, ModelInfo, Timing

ProgressCallback = Callable[[str, float], None]

# Stage names reported through the progress callback (and by the job API), with the fraction done when they start.
STAGE_PROGRESS: dict[str, float] = {
    "reading": 0.0,
    "preprocessing": 0.1,
    "network": 0.3,
    "decoding": 0.8,
    "done": 1.0,
}
_BYTES_PER_MB = 1024.0**2
# Work that overlaps a request's own steps (one at a time per request; more requests queue on the few threads).
_BACKGROUND = ThreadPoolExecutor(max_workers=4, thread_name_prefix="organdetr-predict")
_CPUINFO = "/proc/cpuinfo"


class JobCancelled(Exception):
    """Raised between stages when the caller's cancel event is set."""


@dataclass
class Prediction:
    """A detection result and, on request, the segmentation preview's label map in the input image's geometry."""

    result: DetectionResult
    segmentation: sitk.Image | None = None  # values = class_id (label values), 0 = background


@dataclass(frozen=True)
class DeviceInfo:
    """What the service reports about the device it runs on."""

    type: str  # "cpu" | "cuda"
    name: str
    gpu_memory_total_mb: float | None
    gpu_memory_free_mb: float | None


def _cpu_name() -> str:
    """The processor model where the OS tells it (Linux: /proc/cpuinfo), else the architecture."""
    try:
        for line in Path(_CPUINFO).read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def network_grid_to_image(label_map: torch.Tensor, volume: PreprocessedVolume, reference: sitk.Image) -> sitk.Image:
    """Resample a network-grid label map ``[D0, D1, D2]`` onto ``reference``'s grid (nearest neighbour).

    The network grid is given its exact physical geometry (:func:`network_to_physical_matrix`), so the resampling
    needs no transform and stays exact for oblique images.
    """
    network_to_physical = network_to_physical_matrix(reference, volume.index_to_network)
    axes = network_to_physical[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    labels = label_map.detach().cpu().numpy()
    pixel_type = np.uint8 if labels.max(initial=0) <= np.iinfo(np.uint8).max else np.uint16
    grid = sitk.GetImageFromArray(np.ascontiguousarray(labels.transpose(2, 1, 0)).astype(pixel_type))
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection((axes / spacing).flatten().tolist())
    grid.SetOrigin(network_to_physical[:3, 3].tolist())
    return sitk.Resample(grid, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, grid.GetPixelID())


class Predictor:
    """A loaded detector on one device.

    ``model`` is a shipped model name, a checkpoint directory, or None for the default shipped model;
    ``device`` is ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
    """

    def __init__(self, model: str | Path | None = None, device: str = "auto") -> None:
        self.device = select_device(device)
        loaded = load_checkpoint(model, self.device)
        self.network = loaded.model.eval()
        self.config = loaded.config
        self.checkpoint_directory = Path(loaded.directory)
        self.model_info = ModelInfo(
            name=self.config.name,
            version=self.config.version,
            weights_sha256=loaded.weights_sha256,
            classes=list(self.config.class_names),
        )

    @property
    def device_label(self) -> str:
        """The device as written into results: ``cpu`` or ``cuda:N (GPU name)``."""
        if self.device.type == "cuda":
            return f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        return self.device.type

    def device_info(self) -> DeviceInfo:
        """Device type and name, and for CUDA the current total and free memory."""
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            return DeviceInfo(
                "cuda", torch.cuda.get_device_name(self.device), total / _BYTES_PER_MB, free / _BYTES_PER_MB
            )
        return DeviceInfo("cpu", _cpu_name(), None, None)

    def predict(
        self,
        loaded_image: LoadedImage,
        top_k: int = 3,
        segmentation: bool = False,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        read_s: float = 0.0,
        include_absent: bool = False,
        organs: Sequence[str] | None = None,
    ) -> Prediction:
        """Detect organs in one image.

        ``progress(stage, fraction)`` is called as each stage starts; ``cancel`` is checked between stages
        (:class:`JobCancelled`). ``read_s`` is the time the caller spent reading the image, reported in the timing.
        Organs whose presence probability is below the model's threshold go to the result's ``absent`` list, and
        also into ``detections`` (``present=False``) with ``include_absent``. ``organs`` restricts the result to
        these organ names (all of the model's by default).
        """
        wanted = self.select_organs(organs)
        stage_times: dict[str, float] = {}

        def enter(stage: str) -> None:
            if cancel is not None and cancel.is_set():
                raise JobCancelled(f"cancelled before {stage}")
            stage_times[stage] = time.perf_counter()
            if progress is not None:
                progress(stage, STAGE_PROGRESS[stage])

        image = loaded_image.image
        # Hashing the voxels (image.sha256 of the result) releases the GIL: it runs beside the preprocessing, whose
        # full-size steps mostly use one core.
        hashed = _BACKGROUND.submit(image_info, loaded_image)
        enter("preprocessing")
        check_ct_content(image, loaded_image.source)
        volume = preprocess_image(image, self.config.preprocess)
        enter("network")
        try:
            output = run_detector(
                self.network, volume, self.device, self.config, top_k=top_k, segmentation=segmentation
            )
        except torch.cuda.OutOfMemoryError as error:
            torch.cuda.empty_cache()  # leave the device usable for the next, perhaps smaller, job
            raise RuntimeError(f"out of GPU memory on {self.device_label}; try --device cpu") from error
        enter("decoding")
        detections, absent = self._detections(output, volume, image, wanted, include_absent)
        info = hashed.result()
        label_map = None
        if segmentation and output.segmentation is not None:
            label_map = network_grid_to_image(output.segmentation, volume, image)
        enter("done")

        timing = Timing(
            read_s=read_s,
            preprocess_s=stage_times["network"] - stage_times["preprocessing"],
            network_s=stage_times["decoding"] - stage_times["network"],
            decode_s=stage_times["done"] - stage_times["decoding"],
        )
        timing.total_s = timing.read_s + timing.preprocess_s + timing.network_s + timing.decode_s
        result = DetectionResult(
            image=info,
            model=self.model_info,
            device=self.device_label,
            timing=timing,
            detections=detections,
            presence_threshold=self.config.presence.threshold,
            absent=absent,
        )
        return Prediction(result=result, segmentation=label_map)

    def select_organs(self, organs: Sequence[str] | None) -> set[str]:
        """The organ names a caller asked for (all when None); unknown names are a :class:`UserInputError`."""
        classes = list(self.config.class_names)
        if organs is None:
            return set(classes)
        check_organ_names(organs, classes)
        return set(organs)

    def _detections(
        self,
        output: InferenceOutput,
        volume: PreprocessedVolume,
        image: sitk.Image,
        wanted: set[str],
        include_absent: bool,
    ) -> tuple[list[Detection], list[AbsentOrgan]]:
        """Decoded organs (network space) -> detections in the input image's physical and index space, and the
        organs judged absent."""

        def to_image(box: torch.Tensor):
            return network_box_to_image(box, volume.network_shape, volume.index_to_network, image)

        threshold = self.config.presence.threshold
        detections, absent = [], []
        for organ, presence in zip(output.organs, output.presence, strict=True):
            label = self.config.class_names[organ.class_index]
            if label not in wanted:
                continue
            present = presence >= threshold
            if not present:
                absent.append(AbsentOrgan(label=label, class_id=organ.class_index + 1, presence=presence))
                if not include_absent:
                    continue
            physical, bounds = to_image(organ.box)
            candidates = []
            for score, box in organ.candidates:
                candidate_physical, candidate_bounds = to_image(box)
                candidates.append(Candidate(score=score, box=candidate_physical, voxel_bounds=candidate_bounds))
            detections.append(
                Detection(
                    label=label,
                    class_id=organ.class_index + 1,
                    score=organ.score,
                    presence=presence,
                    present=present,
                    box_source=organ.box_source,
                    box=physical,
                    voxel_bounds=bounds,
                    candidates=candidates,
                )
            )
        return detections, absent
