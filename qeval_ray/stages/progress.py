"""How far the run has got: counted where rows are scored, read by the driver's progress line.

One small :class:`Progress` actor per job. Each scoring actor reports when its engine is ready,
every few seconds that it is alive, and each batch it has scored (rows, ok, errors by status); the
driver asks for a :meth:`Progress.snapshot` at every progress line. The counts are of rows scored
by this run; the summary at the end counts what was written, and is the one to trust.
"""

from __future__ import annotations

import collections
import threading
import time

HEARTBEAT_S = 5.0  # how often a scoring actor says it is alive
ALIVE_S = 3 * HEARTBEAT_S  # an actor silent for longer counts as lost (Ray may be restarting it)
RATE_WINDOW_S = 60.0  # items/s are measured over this last stretch


class Progress:
    def __init__(self):
        self.done = self.ok = 0
        self.errors: collections.Counter = collections.Counter()
        self.samples: collections.deque = collections.deque()  # (time, rows done so far) per batch
        self.seen: dict[str, float] = {}  # scoring actor -> when it last said it is alive
        self.first_ready: float | None = None
        self.last_batch: float | None = None

    def ready(self, actor: str) -> None:
        now = time.time()
        self.seen[actor] = now
        self.first_ready = self.first_ready or now

    def alive(self, actor: str) -> None:
        self.seen[actor] = time.time()

    def record(self, actor: str, rows: int, ok: int, errors: dict[str, int]) -> None:
        now = self.last_batch = time.time()
        self.seen[actor] = now
        self.done += rows
        self.ok += ok
        self.errors.update(errors)
        self.samples.append((now, self.done))
        # keep one sample from before the window: the count the window starts from
        while len(self.samples) > 1 and self.samples[1][0] < now - RATE_WINDOW_S:
            self.samples.popleft()

    def snapshot(self) -> dict:
        now = time.time()
        start = max(now - RATE_WINDOW_S, self.first_ready or now)
        base = 0
        for t, n in self.samples:
            if t > start:
                break
            base = n
        return {"done": self.done, "ok": self.ok, "errors": dict(self.errors),
                "rate": (self.done - base) / (now - start) if now > start else 0.0,
                "actors_alive": sum(1 for t in self.seen.values() if now - t <= ALIVE_S),
                "scoring_s": (self.last_batch - self.first_ready) if self.first_ready and self.last_batch else None}


def start_progress():
    """The job's progress counter as a Ray actor (no CPU reserved)."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(Progress).remote()


class ProgressReporter:
    """A scoring actor's side: says it is ready, keeps saying it is alive, reports each batch.
    Calls are sent without waiting for an answer: progress never slows scoring."""

    def __init__(self, progress, actor: str):
        self.progress, self.actor = progress, actor
        progress.ready.remote(actor)
        self._stop = threading.Event()
        threading.Thread(target=self._beat, name="progress-heartbeat", daemon=True).start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self.progress.alive.remote(self.actor)

    def batch(self, statuses: list[str], ok_status: str) -> None:
        errors = collections.Counter(s for s in statuses if s != ok_status)
        self.progress.record.remote(self.actor, len(statuses), len(statuses) - sum(errors.values()), dict(errors))

    def stop(self) -> None:
        self._stop.set()
