"""The embedded backend: ``organdetr serve`` as a child process of Slicer, on a free local port.

The child runs in its own session (process group) with a random token passed through a 0600 file, announces itself
with the ``ORGANDETR_READY {json}`` line (API.md), and is stopped with SIGTERM and then, if needed, killed together
with every process it started: no orphans survive Slicer.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .backend_client import BackendClient, BackendError

READY_PREFIX = "ORGANDETR_READY "
DEFAULT_START_TIMEOUT_S = 120.0  # first start imports torch and loads the model
DEFAULT_STOP_TIMEOUT_S = 10.0
_STDERR_TAIL_CHARS = 2000


@dataclass
class BackendSettings:
    """How to start the embedded backend."""

    python: str = sys.executable
    model: str | None = None  # shipped default when None, else a name or a local checkpoint folder
    device: str = "auto"  # auto | cpu | cuda
    extra_env: dict[str, str] = field(default_factory=dict)

    def command(self, token_file: Path) -> list[str]:
        command = [self.python, "-m", "organdetr_backend.cli", "serve", "--host", "127.0.0.1", "--port", "0"]
        command += ["--token-file", str(token_file), "--device", self.device]
        if self.model:
            command += ["--model", self.model]
        return command


def _write_token_file(token: str) -> Path:
    descriptor, name = tempfile.mkstemp(prefix="organdetr-token-", suffix=".txt")
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return Path(name)


class EmbeddedBackend:
    """Start, query and stop one ``organdetr serve`` child."""

    def __init__(self, settings: BackendSettings | None = None) -> None:
        self.settings = settings or BackendSettings()
        self.process: subprocess.Popen | None = None
        self.url: str | None = None
        self.token: str | None = None
        self._token_file: Path | None = None
        self._stderr_file = None
        self._lines: queue.Queue[str | None] = queue.Queue()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def client(self) -> BackendClient:
        if not self.running or self.url is None:
            raise BackendError("The embedded backend is not running.")
        return BackendClient(self.url, self.token)

    def start(self, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> BackendClient:
        """Launch the child and wait for its ready line; raises BackendError with its stderr on failure."""
        if self.running:
            return self.client()
        self.token = secrets.token_urlsafe(32)
        self._token_file = _write_token_file(self.token)
        # Closed in _cleanup_files when the child stops: it must outlive this method.
        self._stderr_file = tempfile.TemporaryFile(  # noqa: SIM115
            mode="w+", encoding="utf-8", errors="replace", prefix="organdetr-serve-stderr-"
        )
        environment = {**os.environ, **self.settings.extra_env, "PYTHONUNBUFFERED": "1"}
        try:
            self.process = subprocess.Popen(
                self.settings.command(self._token_file),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self._stderr_file,
                encoding="utf-8",
                errors="replace",  # only a ready line and log text, shown to people
                env=environment,
                start_new_session=True,  # own process group: the whole tree can be signalled at once
            )
        except OSError as error:
            self._cleanup_files()
            raise BackendError(f"Cannot start the backend with {self.settings.python} ({error}).") from None
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        try:
            ready = self._wait_ready(timeout_s)
        except BackendError:
            self.stop()
            raise
        self.url = ready["url"]
        return self.client()

    def _pump_stdout(self) -> None:
        """Read the child's stdout on a thread so a chatty child never blocks on a full pipe."""
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _wait_ready(self, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendError(f"The backend did not start within {timeout_s:.0f} s. {self._stderr_tail()}")
            try:
                line = self._lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:
                raise BackendError(f"The backend exited while starting. {self._stderr_tail()}")
            if line.startswith(READY_PREFIX):
                return json.loads(line[len(READY_PREFIX) :])

    def _stderr_tail(self) -> str:
        if self._stderr_file is None:
            return ""
        self._stderr_file.seek(0)
        text = self._stderr_file.read()[-_STDERR_TAIL_CHARS:].strip()
        return f"Its last messages: {text}" if text else ""

    def descendant_pids(self) -> list[int]:
        """The child and everything it started, alive now (the child alone without psutil)."""
        tree = self._tree()
        if tree is None:
            return [self.process.pid] if self.running else []
        return [member.pid for member in tree if member.is_running()]

    def _tree(self):
        """psutil handles of the child and its descendants (they detect pid reuse), or None without psutil."""
        try:
            import psutil
        except ImportError:
            return None
        if self.process is None:
            return []
        try:
            parent = psutil.Process(self.process.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Graceful SIGTERM, then kill what is left of the whole tree after ``timeout_s``."""
        process = self.process
        if process is None:
            return
        tree = self._tree()
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=timeout_s)
        _kill_tree(process, tree)
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
        self.process, self.url = None, None
        self._cleanup_files()

    def _cleanup_files(self) -> None:
        if self._token_file is not None:
            self._token_file.unlink(missing_ok=True)
            self._token_file = None
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None

    def __enter__(self) -> EmbeddedBackend:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _kill_tree(process: subprocess.Popen, tree) -> None:
    """SIGKILL what is left: the recorded psutil tree, or without psutil the child's process group."""
    if tree is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # start_new_session made the child its group's leader
        return
    import psutil

    survivors = []
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()  # psutil refuses if the pid now belongs to another process
            survivors.append(member)
    psutil.wait_procs(survivors, timeout=DEFAULT_STOP_TIMEOUT_S)
