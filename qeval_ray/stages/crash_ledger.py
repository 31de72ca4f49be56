"""Which batch was being scored when a scoring actor died, and how often each item was to blame.

Ray restarts a scoring actor whose process dies (a segfault, an OOM kill, a dead engine) and
retries its batch. One small :class:`CrashLedger` actor per job remembers the batches in flight:
a scoring actor calls ``start`` when a batch arrives, ``narrow`` with the items it sends to the
engine, and ``finish`` after it, so a batch whose previous attempt never finished crashed its
actor, and each item that was in the engine then (all of the batch, or the one item in flight when
scoring one by one) is charged one crash. The score stage then retries such a batch item by item,
alone in its actor, and gives an item up as a ``score_error`` row once it has crashed the engine
``max_crashes`` times.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter


class CrashLedger:
    def __init__(self):
        self.inflight: dict[str, list[str]] = {}
        self.crashes: Counter = Counter()
        self.events = 0  # batches whose actor died while scoring them

    def start(self, key: str, ids: list[str]) -> dict[str, int]:
        """A batch arrives (none of it in the engine yet); returns how often each of its items
        has crashed an actor."""
        previous = self.inflight.get(key)
        if previous:
            self.crashes.update(previous)
            self.events += 1
        self.inflight[key] = []
        return {i: self.crashes[i] for i in ids}

    def narrow(self, key: str, ids: list[str]) -> None:
        """``ids`` of the batch are in the engine now (all of it, or one item at a time)."""
        self.inflight[key] = list(ids)

    def finish(self, key: str) -> None:
        self.inflight.pop(key, None)

    def crash_events(self) -> int:
        return self.events


def start_crash_ledger():
    """The job's ledger as a Ray actor: restarted itself if its node dies (no CPU reserved)."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(CrashLedger).remote()


class LedgerClient:
    """Awaits a ledger whether it is a Ray actor (the job) or a plain object (unit tests)."""

    def __init__(self, ledger):
        self.ledger = ledger

    async def _call(self, method: str, *args):
        fn = getattr(self.ledger, method)
        if hasattr(fn, "remote"):
            return await fn.remote(*args)  # an ObjectRef: awaited without blocking the actor's loop
        return fn(*args)

    async def start(self, key: str, ids: list[str]) -> dict[str, int]:
        return await self._call("start", key, ids)

    async def narrow(self, key: str, ids: list[str]) -> None:
        await self._call("narrow", key, ids)

    async def finish(self, key: str) -> None:
        await self._call("finish", key)


class SharedOrAlone:
    """An actor's batches share its engine, except a batch that crashed an actor before: that one
    waits until the engine is idle and holds it alone, so a crash during it charges only its own
    item. Waiting alone-batches go first, so a busy actor cannot starve them."""

    def __init__(self):
        self._changed = asyncio.Condition()
        self._sharing = 0
        self._alone = False
        self._waiting_alone = 0

    @contextlib.asynccontextmanager
    async def shared(self):
        async with self._changed:
            await self._changed.wait_for(lambda: not self._alone and not self._waiting_alone)
            self._sharing += 1
        try:
            yield
        finally:
            async with self._changed:
                self._sharing -= 1
                self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def alone(self):
        async with self._changed:
            self._waiting_alone += 1
            try:
                await self._changed.wait_for(lambda: not self._alone and not self._sharing)
            finally:
                self._waiting_alone -= 1
            self._alone = True
        try:
            yield
        finally:
            async with self._changed:
                self._alone = False
                self._changed.notify_all()
