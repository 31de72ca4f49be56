"""What the operator sees while a job runs: the job's own lines, one progress line, the summary.

Quiet by default: everything else a run prints (Ray's and Ray Data's logs, vLLM's, torch's and
transformers' warnings, the scoring actors' output, Ray's C++ core) goes to the run's log file,
whose path is printed first. The redirection is done on the process's file descriptors, so it
catches what Python logging does not see. ``--verbose`` leaves everything on the terminal.

The progress line carries the same information in a terminal and in piped logs (``ray job logs``):
rows scored of the run's total, ok and errors so far, items/s over the last minute, the time left
at that rate, and the scoring actors alive. In a terminal it is redrawn in place every second; in
logs it is one line every ``--progress-interval`` seconds; and once more at the end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

LOGGER = "qeval_ray"


class Console:
    def __init__(self, verbose: bool = False, log_dir: str | None = None, name: str = "qeval-ray"):
        self.verbose = verbose
        self.name = name
        self.log_dir = Path(log_dir) if log_dir else None
        self.log_file: Path | None = None
        self.out, self.err = sys.stdout, sys.stderr  # the terminal (or pipe) the operator reads
        self._saved: list[tuple[int, int]] = []

    # --- lifetime ----------------------------------------------------------------------------

    def __enter__(self) -> "Console":
        handler = logging.StreamHandler(_Deferred(lambda: self.err))
        handler.setFormatter(logging.Formatter(f"{self.name}: %(message)s"))
        job_log = logging.getLogger(LOGGER)
        job_log.handlers[:] = [handler]
        job_log.setLevel(logging.INFO)
        job_log.propagate = False
        return self

    def quiet(self) -> None:
        """From now on, everything but the job's own lines goes to the run's log file (unless
        verbose). Called when the work begins: a refusal before it needs no log file."""
        if self.verbose or self._saved:
            return
        self.log_dir = self.log_dir or Path(tempfile.gettempdir()) / "qeval-ray" / "logs" / (
            time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_file = self.log_dir / "job.log"
        sys.stdout.flush()
        sys.stderr.flush()
        log_fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        for fd in (1, 2):
            self._saved.append((fd, os.dup(fd)))
        self.out = os.fdopen(os.dup(self._saved[0][1]), "w", buffering=1)
        self.err = os.fdopen(os.dup(self._saved[1][1]), "w", buffering=1)
        for fd in (1, 2):
            os.dup2(log_fd, fd)
        os.close(log_fd)
        self.line(f"logs: {self.log_dir} (--verbose to see them here)")

    def __exit__(self, *exc) -> bool:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in self._saved:
            os.dup2(saved, fd)
            os.close(saved)
        self._saved.clear()
        if exc[0] is not None and self.log_file is not None:
            self.err.write(f"{self.name}: full logs: {self.log_file}\n")
        return False

    # --- output ------------------------------------------------------------------------------

    def line(self, text: str) -> None:
        """One of the job's own lines, on the operator's stderr."""
        self.err.write(f"{self.name}: {text}\n")
        self.err.flush()

    def print(self, text: str) -> None:
        """The job's result (the summary), on the operator's stdout."""
        self.out.write(text + "\n")
        self.out.flush()

    @contextlib.contextmanager
    def progress(self, snapshot: Callable[[], dict | None], total: int, interval: float):
        """Show the progress line while the block runs (see the module doc)."""
        tty = self.err.isatty()
        stop = threading.Event()
        started = time.time()

        def show(final: bool = False):
            state = snapshot()
            if state is None:
                return
            text = format_progress(state, total, time.time() - started)
            if tty:
                self.err.write(f"\r{self.name}: {text}\033[K" + ("\n" if final else ""))
                self.err.flush()
            else:
                self.line(text)

        def loop():
            while not stop.wait(1.0 if tty else interval):
                with contextlib.suppress(Exception):  # a missed line is no reason to stop the job
                    show()

        thread = threading.Thread(target=loop, name="progress-line", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            with contextlib.suppress(Exception):
                show(final=True)


class _Deferred:
    """A stream that writes to whatever ``get()`` returns at the time (the console's stderr)."""

    def __init__(self, get):
        self.get = get

    def write(self, text):
        return self.get().write(text)

    def flush(self):
        return self.get().flush()


def format_progress(state: dict, total: int, elapsed: float) -> str:
    done = min(state["done"], total)
    errors = sum(state["errors"].values())
    parts = [f"{done:,}/{total:,} scored ({state['ok']:,} ok, {errors:,} error{'s' * (errors != 1)})"]
    rate = state["rate"]
    if state["scoring_s"] is None and done == 0:
        parts.append(f"starting: {state['actors_alive']} scoring actor(s) ready, {_duration(elapsed)} in")
    else:
        parts.append(f"{rate:,.1f} items/s (last minute)")
        left = total - done
        if left > 0:
            parts.append(f"ETA {_duration(left / rate)}" if rate > 0 else "ETA unknown")
        parts.append(f"{state['actors_alive']} scoring actor(s) alive")
    return " · ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
