"""Model benchmark: parameter counts per component, forward and training-step time and peak memory on CPU.

Figures, not assertions. For each preset (default: ``small`` at 128^3 and ``paper`` at 224x224x96, batch 1) it
prints the parameter count of the backbone, the MSA encoder (or the no-MSA input projections), the deformable
transformer (decoder layers, queries, optional deformable encoder) and the heads (class, box, segmentation), then
the wall and process-CPU seconds and the peak resident-memory increase of a forward pass (inference mode) and of a
training step (forward + backward, train mode). ``small`` is also timed at batch 2, the training configuration.

    python benchmarks/model_benchmark.py [--presets small paper] [--repeats 3] [--threads N]

On a shared, oversubscribed CPU run it with ``OMP_WAIT_POLICY=PASSIVE``: spinning OpenMP threads otherwise
make two threads several times slower than one.

:func:`time_training_step` takes any ``loss_fn(outputs) -> loss``; plug the real criterion (DQM matching and
losses) in there to measure a full step and the matcher's share of it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil
import torch
from organdetr.config import preset_config
from organdetr.organ_detr import OrganDETR, build_model

PRESET_INPUTS = {"small": (128, 128, 128), "paper": (224, 224, 96)}
TRAIN_BATCH = 2
MEMORY_SAMPLE_S = 0.005
MIB = 1024.0 * 1024.0


def parameter_counts(model: OrganDETR) -> dict[str, int]:
    """Parameters per component: backbone, msa (or input projections), transformer, heads, total."""
    decoder = model.decoder
    heads = [decoder.class_head, decoder.box_heads] + ([model.seg_heads] if model.seg_heads is not None else [])
    head_ids = {id(p) for module in heads for p in module.parameters()}

    def count(module: torch.nn.Module | None, exclude: set[int] = frozenset()) -> int:
        return 0 if module is None else sum(p.numel() for p in module.parameters() if id(p) not in exclude)

    return {
        "backbone": count(model.backbone),
        "msa": count(model.msa) + count(model.input_proj),
        "transformer": count(model.decoder, head_ids) + count(model.encoder),
        "heads": sum(count(module) for module in heads),
        "total": count(model),
    }


class PeakMemory:
    """Peak resident memory while the ``with`` block runs (sampled by a thread), absolute and above the start.

    Freed tensors stay in the allocator's pool, so after a warm-up call the increase under-reports; the absolute
    peak resident size is the figure to compare.
    """

    def __enter__(self) -> PeakMemory:
        self._process = psutil.Process()
        self.baseline = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(MEMORY_SAMPLE_S)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def increase_mib(self) -> float:
        return (self.peak - self.baseline) / MIB


@dataclass
class Timing:
    wall_s: float
    cpu_s: float
    peak_rss_mib: float
    peak_increase_mib: float


def _measure(fn: Callable[[], None], repeats: int) -> Timing:
    """Median wall / CPU seconds over ``repeats`` calls after one warm-up call, and the largest memory increase."""
    fn()
    walls, cpus, peaks, increases = [], [], [], []
    for _ in range(repeats):
        with PeakMemory() as memory:
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        peaks.append(memory.peak / MIB)
        increases.append(memory.increase_mib)
    return Timing(statistics.median(walls), statistics.median(cpus), max(peaks), max(increases))


def synthetic_loss(outputs: dict) -> torch.Tensor:
    """A stand-in loss touching every output (logits, boxes, auxiliary outputs, segmentation maps)."""
    tensors = [outputs["pred_logits"], outputs["pred_boxes"]]
    for aux in outputs["aux_outputs"]:
        tensors += [aux["pred_logits"], aux["pred_boxes"]]
    tensors += outputs.get("seg_logits", [])
    return sum(t.float().square().mean() for t in tensors)


def time_forward(model: OrganDETR, images: torch.Tensor, repeats: int) -> Timing:
    """Inference forward pass (eval mode, no autograd, no segmentation maps)."""
    model.eval()

    def step() -> None:
        with torch.inference_mode():
            model(images)

    return _measure(step, repeats)


def time_training_step(
    model: OrganDETR,
    images: torch.Tensor,
    repeats: int,
    loss_fn: Callable[[dict], torch.Tensor] = synthetic_loss,
) -> Timing:
    """One training step without the optimiser update: train-mode forward, ``loss_fn(outputs)``, backward."""
    model.train()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(model(images)).backward()

    return _measure(step, repeats)


def _report(label: str, timing: Timing) -> None:
    print(
        f"  {label:<34} wall {timing.wall_s:8.3f} s   cpu {timing.cpu_s:8.3f} s   "
        f"peak RSS {timing.peak_rss_mib:7.0f} MiB (+{timing.peak_increase_mib:.0f})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESET_INPUTS), choices=sorted(PRESET_INPUTS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {psutil.getloadavg()}")
    torch.manual_seed(0)
    for preset in args.presets:
        config = preset_config(preset).model
        model = build_model(config)
        counts = parameter_counts(model)
        size = PRESET_INPUTS[preset]
        print(f"\n{preset}: input {size}, parameters " + ", ".join(f"{k} {v / 1e6:.3f} M" for k, v in counts.items()))
        images = torch.randn(1, 1, *size)
        _report("forward (batch 1, eval)", time_forward(model, images, args.repeats))
        _report("forward+backward (batch 1, train)", time_training_step(model, images, args.repeats))
        if preset == "small":
            batch = torch.randn(TRAIN_BATCH, 1, *size)
            _report(f"forward+backward (batch {TRAIN_BATCH}, train)", time_training_step(model, batch, args.repeats))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
