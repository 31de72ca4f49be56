"""Fault injection for the crash-handling tests: never set in production.

The job reads ``QEVAL_CHAOS`` on the driver (``FaultInjection.from_environment``) and hands the
result to the score stage, which calls :meth:`FaultInjection.before_engine` before every engine
call. ``crash_on_prompt=TEXT`` ends the actor process when an item whose prompt contains TEXT is
scored; ``delay_s=SECONDS`` makes each engine call that much slower (a test's window to kill);
``hang_once=PATH`` (with ``hang_after=N`` engine calls, default 3) writes the actor's pid to PATH
and stops inside the engine call until killed, unless PATH exists already: a test can then kill an
actor that is certainly mid-batch, and its replacement does not hang again. ``kill_engine_once=PATH``
(after ``hang_after`` calls too) kills the actor's child processes (vLLM's engine core) once, so the
engine call that follows meets a dead engine, as after a GPU fault.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Sequence

log = logging.getLogger(__name__)

ENVIRONMENT_VARIABLE = "QEVAL_CHAOS"


@dataclass
class FaultInjection:
    crash_on_prompt: str | None = None
    delay_s: float = 0.0
    hang_once: str | None = None
    hang_after: int = 3
    kill_engine_once: str | None = None
    calls: int = 0

    @classmethod
    def parse(cls, spec: str) -> "FaultInjection":
        pairs = dict(part.split("=", 1) for part in spec.split(";") if "=" in part)
        return cls(crash_on_prompt=pairs.get("crash_on_prompt"), delay_s=float(pairs.get("delay_s", 0)),
                   hang_once=pairs.get("hang_once"), hang_after=int(pairs.get("hang_after", 3)),
                   kill_engine_once=pairs.get("kill_engine_once"))

    @classmethod
    def from_environment(cls) -> "FaultInjection | None":
        spec = os.environ.get(ENVIRONMENT_VARIABLE, "")
        return cls.parse(spec) if spec else None

    def before_engine(self, texts: Sequence[str]) -> None:
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.hang_once and self.calls > self.hang_after and not os.path.exists(self.hang_once):
            tmp = f"{self.hang_once}.{os.getpid()}"
            with open(tmp, "w") as f:
                f.write(str(os.getpid()))
            os.replace(tmp, self.hang_once)
            log.error("%s: hanging mid-batch until this actor is killed", ENVIRONMENT_VARIABLE)
            while True:
                time.sleep(60)
        if self.kill_engine_once and self.calls > self.hang_after and _claim(self.kill_engine_once):
            import psutil

            log.error("%s: killing the engine's processes on purpose", ENVIRONMENT_VARIABLE)
            for child in psutil.Process().children(recursive=True):
                child.kill()
        if self.crash_on_prompt and any(self.crash_on_prompt in text for text in texts):
            log.error("%s: crashing the scoring actor on purpose", ENVIRONMENT_VARIABLE)
            os._exit(71)


def _claim(path: str) -> bool:
    """True once across processes: the first caller creates ``path`` (with its pid)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True
