"""Remote mode in a Python WITHOUT torch: run by test_remote_mode_without_torch in the client-only environment.

    python remote_mode_check.py <server url> <token> <ct file>

Detects organs through the module's own logic (DetectionSession, remote choice) into a slicer-core scene, records
progress, cancels a second run, and prints one JSON line with what happened.
"""

import json
import sys
import time
from pathlib import Path

import slicer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "OrganDETRSlicer"))

from OrganDETRSlicerLib.detection_run import DetectionOptions
from OrganDETRSlicerLib.roi_nodes import organdetr_rois
from OrganDETRSlicerLib.session import BackendChoice, DetectionSession


def main(url: str, token: str, ct: str) -> None:
    scene = slicer.vtkMRMLScene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(ct)
    assert storage.ReadData(volume)
    session = DetectionSession(scene)
    choice = BackendChoice(remote=True, url=url, token=token, consent=True)
    task = session.start_detection(volume, choice, DetectionOptions())
    states = []
    while not task.ended:
        progress = session.tick()
        states.append(progress.state)
        time.sleep(0.05)
    cancelled = session.start_detection(volume, choice, DetectionOptions())
    while cancelled.progress.state != "running" and not cancelled.ended:
        session.tick()
        time.sleep(0.01)
    session.cancel()
    session.shutdown()
    report = {
        "state": task.progress.state,
        "words": task.progress.words,
        "rois": len(organdetr_rois(scene, volume)),
        "states": sorted(set(states)),
        "cancelled": cancelled.progress.state,
        "torch_loaded": "torch" in sys.modules,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:4])
