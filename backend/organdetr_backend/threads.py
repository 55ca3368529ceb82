"""CPU thread defaults that stay fast on a shared machine.

torch's own default (one thread per core, OpenMP threads that spin while they wait) assumes the cores are free. A
workstation always runs other busy processes, and then spinning threads steal the cores they wait for: on 2 cores
with one other busy process the network stage ran 13x and a training step 7x slower than with one thread. So every
``organdetr`` command and the test suite make waiting OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``) and use as
many threads as there are cores that other programs leave free. An explicit ``--threads``, or ``OMP_NUM_THREADS``
and ``OMP_WAIT_POLICY`` set by the user, always win.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable, Sequence

from organdetr.errors import UserInputError

WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
PASSIVE_WAITING = "PASSIVE"
NUM_THREADS_ENV = "OMP_NUM_THREADS"
THREADS_HELP = (
    "CPU threads for this process (default: one per core that other programs leave free, or $OMP_NUM_THREADS)"
)
# The shortest time over which the CPU use of other programs is sampled. The load average would need no wait, but it
# trails by a minute: it still counts a program that just ended and not yet one that just started.
CPU_SAMPLE_S = 0.2


def use_passive_waiting() -> None:
    """Make idle OpenMP threads sleep instead of spinning, unless the user chose a policy.

    Call before torch is imported: OpenMP reads the policy once, when it initialises.
    """
    os.environ.setdefault(WAIT_POLICY_ENV, PASSIVE_WAITING)


def _usable_cpus() -> list[int]:
    """The CPUs this process may run on (its CPU affinity where the OS reports it)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def usable_cores() -> int:
    """How many CPUs this process may run on."""
    return len(_usable_cpus())


def busy_cores(meanwhile: Callable[[], object] = lambda: None) -> float:
    """How many of this process's usable cores other programs keep busy now, sampled while ``meanwhile`` runs here
    (and for at least ``CPU_SAMPLE_S``): the usable cores' use minus this process's own, so that the sample need not
    wait idly (the CLI imports torch meanwhile, ~1.3 s)."""
    import psutil

    this_process = psutil.Process()
    started, own_before = time.monotonic(), sum(this_process.cpu_times()[:2])
    psutil.cpu_percent(percpu=True)  # starts the sample
    meanwhile()
    time.sleep(max(0.0, CPU_SAMPLE_S - (time.monotonic() - started)))
    per_cpu = psutil.cpu_percent(percpu=True)
    own = (sum(this_process.cpu_times()[:2]) - own_before) / (time.monotonic() - started)
    return other_programs_cores(per_cpu, _usable_cpus(), own)


def other_programs_cores(per_cpu_percent: Sequence[float], usable: Sequence[int], own_cores: float) -> float:
    """Cores' worth of CPU that other programs use: the use of the ``usable`` CPUs (percent per CPU, as psutil
    reports it) minus this process's own (``own_cores``), at least 0."""
    used = sum(per_cpu_percent[cpu] for cpu in usable if cpu < len(per_cpu_percent)) / 100.0
    return max(0.0, used - own_cores)


def free_cores(cores: int, busy: float) -> int:
    """Cores of ``cores`` left over when ``busy`` cores' worth of work runs elsewhere, at least 1."""
    return max(1, min(cores, cores - round(busy)))


def _threads_from_environment() -> int | None:
    """``$OMP_NUM_THREADS`` when it is a positive integer (OpenMP also accepts lists, which we leave to it)."""
    value = os.environ.get(NUM_THREADS_ENV, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def default_thread_count(meanwhile: Callable[[], object] = lambda: None) -> int:
    """``$OMP_NUM_THREADS`` when set, otherwise one thread per free core (sampled while ``meanwhile`` runs)."""
    from_environment = _threads_from_environment()
    if from_environment is not None:
        meanwhile()
        return from_environment
    return free_cores(usable_cores(), busy_cores(meanwhile))


def configure_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count to ``threads`` (None: :func:`default_thread_count`, sampled while torch is
    imported); returns the count."""
    if threads is not None and threads < 1:
        raise UserInputError("--threads must be at least 1")
    count = default_thread_count(lambda: importlib.import_module("torch")) if threads is None else threads
    import torch

    torch.set_num_threads(count)
    return count
