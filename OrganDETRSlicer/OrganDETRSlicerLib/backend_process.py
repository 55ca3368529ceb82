"""The embedded backend: ``organdetr serve`` as a child process of Slicer, on a free local port.

The child gets a random token through a private file, announces itself with the ready line (organdetr_client.api),
and is stopped gracefully and then, if needed, killed together with every process it started: no orphans survive
Slicer. On POSIX it runs in its own session (process group); on Windows in its own process group with no console
window. ``start`` waits for the ready line and ``stop`` for the exit: call them off the GUI thread (the module's
logic does). ``stop`` may be called from another thread while ``start`` waits; ``start`` then fails at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from organdetr_client import api
from organdetr_client.http_client import BackendClient, BackendError

DEFAULT_START_TIMEOUT_S = 120.0  # first start imports torch and loads the model
DEFAULT_STOP_TIMEOUT_S = 10.0
READY_WAIT_SLICE_S = 0.5  # how often the start wait looks at its deadline
_STDERR_TAIL_CHARS = 2000
_ON_WINDOWS = os.name == "nt"


@dataclass(frozen=True)
class BackendSettings:
    """How to start the embedded backend."""

    python: str = sys.executable
    model: str | None = None  # shipped default when None, else a name or a local checkpoint folder
    device: str = "auto"  # auto | cpu | cuda
    # The child's environment; None: this process's. A Python that is not Slicer's must get Slicer's startup
    # environment (slicer.util.startupEnvironment()), without Slicer's PYTHONHOME and PYTHONPATH.
    environment: tuple[tuple[str, str], ...] | None = None

    def command(self, token_file: Path) -> list[str]:
        command = [self.python, "-m", "organdetr_backend.cli", "serve", "--host", "127.0.0.1", "--port", "0"]
        command += ["--token-file", str(token_file), "--device", self.device]
        if self.model:
            command += ["--model", self.model]
        return command

    def child_environment(self) -> dict[str, str]:
        base = dict(self.environment) if self.environment is not None else dict(os.environ)
        return {**base, "PYTHONUNBUFFERED": "1"}


def _write_token_file(token: str) -> Path:
    """A file readable by this user only: mkstemp creates it with mode 0600 on POSIX, and in the user's own
    temporary folder on Windows (os.fchmod does not exist there before Python 3.13)."""
    descriptor, name = tempfile.mkstemp(prefix="organdetr-token-", suffix=".txt")
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return Path(name)


def _platform_process_options() -> dict:
    """Popen options that give the child its own process group (signalled as a whole) and, on Windows, no
    console window (what slicer.util.launchConsoleProcess does)."""
    if not _ON_WINDOWS:
        return {"start_new_session": True}
    startup = subprocess.STARTUPINFO()
    startup.dwFlags |= subprocess.STARTF_USESHOWWINDOW
    startup.wShowWindow = 0  # SW_HIDE
    return {
        "startupinfo": startup,
        "creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW,
    }


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
        self._lock = threading.RLock()  # start's launch and stop never interleave

    @property
    def running(self) -> bool:
        process = self.process
        return process is not None and process.poll() is None

    @property
    def pid(self) -> int | None:
        process = self.process
        return process.pid if process else None

    def client(self) -> BackendClient:
        if not self.running or self.url is None:
            raise BackendError("The embedded backend is not running.")
        return BackendClient(self.url, self.token)

    def start(self, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> BackendClient:
        """Launch the child and wait for its ready line; raises BackendError with its stderr on failure."""
        with self._lock:
            if self.running and self.url is not None:
                return self.client()
            self._launch()
        try:
            ready = self._wait_ready(timeout_s)
        except BackendError:
            self.stop()
            raise
        self.url = ready["url"]
        return self.client()

    def _launch(self) -> None:
        self.token = secrets.token_urlsafe(32)
        self._token_file = _write_token_file(self.token)
        # Closed in _cleanup_files when the child stops: it must outlive this method.
        self._stderr_file = tempfile.TemporaryFile(  # noqa: SIM115
            mode="w+", encoding="utf-8", errors="replace", prefix="organdetr-serve-stderr-"
        )
        self._lines = queue.Queue()
        try:
            self.process = subprocess.Popen(
                self.settings.command(self._token_file),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self._stderr_file,
                encoding="utf-8",
                errors="replace",  # only a ready line and log text, shown to people
                env=self.settings.child_environment(),
                **_platform_process_options(),
            )
        except OSError as error:
            self._cleanup_files()
            raise BackendError(f"Cannot start the backend with {self.settings.python} ({error}).") from None
        threading.Thread(target=self._pump_stdout, args=(self.process, self._lines), daemon=True).start()

    @staticmethod
    def _pump_stdout(process: subprocess.Popen, lines: queue.Queue) -> None:
        """Read the child's stdout on a thread so a chatty child never blocks on a full pipe."""
        assert process.stdout is not None
        with contextlib.suppress(ValueError, OSError):  # the pipe is closed by stop()
            for line in process.stdout:
                lines.put(line)
        lines.put(None)

    def _wait_ready(self, timeout_s: float) -> dict:
        prefix = api.READY_LINE_PREFIX + " "
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendError(f"The backend did not start within {timeout_s:.0f} s. {self._stderr_tail()}")
            try:
                line = self._lines.get(timeout=min(remaining, READY_WAIT_SLICE_S))
            except queue.Empty:
                continue
            if line is None:
                raise BackendError(f"The backend exited while starting. {self._stderr_tail()}")
            if line.startswith(prefix):
                return json.loads(line[len(prefix) :])

    def _stderr_tail(self) -> str:
        with self._lock:
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
        """Ask the child to stop (SIGTERM; TerminateProcess on Windows), then kill what is left of the whole tree
        after ``timeout_s``."""
        with self._lock:
            process = self.process
            if process is None:
                return
            tree = self._tree()
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
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
    """Kill what is left: the recorded psutil tree, or without psutil the child's process group (POSIX) or the
    child alone (Windows)."""
    if tree is None:
        if _ON_WINDOWS:
            with contextlib.suppress(OSError):
                process.kill()
            return
        import signal

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
