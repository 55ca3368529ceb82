"""A process of the console script keeps freed memory for its next scan (glibc), in worker threads too."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from organdetr_backend.allocator import RELEASE_MEMORY_ENV, _is_glibc

pytestmark = pytest.mark.skipif(not _is_glibc(), reason="the allocator setting is glibc's")

# Runs in a fresh interpreter: how the console script's process is set up (argv[1]), then the page faults of touching a
# freed 128 MiB block's worth of memory again, in a worker thread as in the service.
PROBE = """
import ctypes, json, resource, sys, threading
from organdetr_backend import allocator, cli

setup = sys.argv[1]
if setup == "console-script":
    sys.argv = ["organdetr", "models"]
    assert cli.main() == 0
elif setup == "function":
    allocator.keep_freed_memory()

BLOCK = 128 << 20
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
faults = []

def touched_block():
    block = libc.malloc(BLOCK)  # as torch and ITK allocate (numpy may ask for huge pages, which fault rarely)
    ctypes.memset(block, 1, BLOCK)
    return block

def touch_twice():
    libc.free(touched_block())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    libc.free(touched_block())
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

worker = threading.Thread(target=touch_twice)
worker.start()
worker.join()
print(json.dumps({"pages": BLOCK // resource.getpagesize(), "faults": faults[0]}))
"""


def _refaults(setup: str, **environment: str) -> float:
    """The fraction of the block's pages that fault again when it is allocated a second time."""
    env = {key: value for key, value in os.environ.items() if key not in (RELEASE_MEMORY_ENV, "GLIBC_TUNABLES")}
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, setup], env={**env, **environment}, capture_output=True, text=True, check=True
    )
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    return result["faults"] / result["pages"]


def test_console_script_reuses_freed_memory() -> None:
    assert _refaults("none") > 0.5  # glibc's default: the block went back to the OS
    assert _refaults("console-script") < 0.05
    assert _refaults("function") < 0.05


def test_users_can_keep_glibcs_default() -> None:
    assert _refaults("console-script", **{RELEASE_MEMORY_ENV: "1"}) > 0.5
    assert _refaults("function", GLIBC_TUNABLES="glibc.malloc.trim_threshold=0") > 0.5
