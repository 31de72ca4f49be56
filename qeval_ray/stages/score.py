"""The score stage (actors, one engine each): decoded items -> the scorer's prompts -> the engine ->
the scorer's columns.

The stage is an async UDF: Ray Data keeps several batches in flight in each actor
(``batches_in_flight_per_actor``), so while one batch's answers are turned into columns, the next
batch's requests are already in the engine. How an item's prompts reach the engine depends on the
engine (``engines.base``):

- a concurrent engine (vLLM) gets each item on its own, all items of all batches in flight at
  once; an item whose requests fail becomes a ``score_error`` row and nothing else is touched;
- a batch engine (HF) gets the batch in one call, one call at a time; if the call fails, the batch
  is split in halves (an item's prompts stay together) until the failing items are found: a
  poisonous item costs O(log batch) extra calls, never the batch.

Items that kill the process instead are handled with Ray and the :mod:`crash ledger
<qeval_ray.stages.crash_ledger>`: a batch that crashed an actor is retried item by item, and an
item that crashed the engine ``max_crashes`` times becomes a ``score_error`` row. Engine errors
that leave the engine unusable (``Engine.is_fatal``) end the actor process on purpose, so Ray
replaces it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa

from qeval_ray import storage
from qeval_ray.contracts.schema import (
    ERROR,
    ID,
    MEDIA_DIGEST,
    MEDIA_TYPE,
    PIXELS,
    PIXELS_SHAPE,
    STATUS,
    Provenance,
    Status,
    conform,
    output_schema,
)
from qeval_ray.engines import load_engine
from qeval_ray.engines.base import Engine, EngineConfig, Media, ScoreRequest
from qeval_ray.scorers.base import Scorer
from qeval_ray.stages.base import AsyncStage, Resources, StageSpec, still_ok, with_columns
from qeval_ray.stages.crash_ledger import LedgerClient, SharedOrAlone
from qeval_ray.stages.decode import pixels_of
from qeval_ray.stages.progress import ProgressReporter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoringOptions:
    engine: str
    engine_config: EngineConfig
    provenance: Provenance
    storage: storage.StorageOptions = storage.DEFAULT
    crash_ledger: object = None  # a CrashLedger or its actor handle (None: no crash accounting)
    progress: object = None  # the job's stages.progress.Progress actor (None: nothing reported)
    max_crashes: int = 3  # crashes of one item before it is given up as a score_error row
    faults: object = None  # testing.faults.FaultInjection (tests only): called before each engine call
    model: object = None  # models.ModelSource as the driver resolved it (None: engine_config.model as is)


def score_stage(options: ScoringOptions, scorer: Scorer, manifest_schema: pa.Schema, *, actors: int,
                batch_size: int, resources: Resources, batches_in_flight: int = 4) -> StageSpec:
    """A pool of ``actors`` actors, each holding one engine and ``batches_in_flight`` batches."""
    adds = (STATUS, ERROR, *(f.name for f in scorer.fields()), *options.provenance.as_dict())
    return StageSpec("score", ScoreStage, dict(options=options, scorer=scorer, manifest_schema=manifest_schema),
                     needs=(ID, STATUS, MEDIA_TYPE, MEDIA_DIGEST, PIXELS, PIXELS_SHAPE, *scorer.inputs()),
                     adds=adds, batch_size=batch_size, resources=resources, actors=actors,
                     batches_in_flight_per_actor=batches_in_flight)


@dataclass
class _Item:
    row: int  # position in the batch
    id: str
    texts: dict[str, list[str]]  # the scorer's prompts, by group (aspect)
    media: Media

    @property
    def requests(self) -> list[ScoreRequest]:
        """Every prompt of the item, group after group: one engine call shares the media prefix."""
        return [ScoreRequest(self.media, text) for texts in self.texts.values() for text in texts]

    def split(self, logprobs: np.ndarray) -> dict[str, np.ndarray]:
        """The item's (prompts x tokens) log-probs, back per group."""
        out, start = {}, 0
        for group, texts in self.texts.items():
            out[group] = logprobs[start:start + len(texts)]
            start += len(texts)
        return out


class ScoreStage(AsyncStage):
    """An async callable class: Ray Data runs it in an actor pool, builds the engine once per actor
    and awaits several batches at once in each actor."""

    WATCHDOG_INTERVAL_S = 2.0
    DEAD_ENGINE_GRACE_S = 15.0  # a dead engine's requests fail well within this

    def __init__(self, options: ScoringOptions, scorer: Scorer, manifest_schema: pa.Schema,
                 engine: Engine | None = None):
        _actor_logging()
        self.options = options
        self.scorer = scorer
        self.schema = output_schema(manifest_schema, scorer.fields())  # pixels dropped
        self.engine = engine or load_engine(options.engine, _local_model(options))
        self.token_ids = self.engine.token_ids(scorer.tokens)
        self.ledger = LedgerClient(options.crash_ledger) if options.crash_ledger is not None else None
        self._one_call_at_a_time = asyncio.Lock()  # a batch engine computes one call at a time
        self._batches = SharedOrAlone()  # batches share the engine; a suspect batch runs alone
        self.progress = ProgressReporter(options.progress, _actor_name()) if options.progress is not None else None
        self._stop_watchdog = threading.Event()
        threading.Thread(target=self._watch_engine, name="engine-watchdog", daemon=True).start()

    def __del__(self):
        # Ray Data drops the stage when the actor pool shuts down gracefully.
        if getattr(self, "_stop_watchdog", None) is not None:
            self._stop_watchdog.set()
        if getattr(self, "progress", None) is not None:
            self.progress.stop()
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()

    async def process(self, batch: pa.Table) -> pa.Table:
        items = self._items(batch)
        out = self._columns(batch, items, await self._score_batch(items))
        if self.progress is not None:
            self.progress.batch(out.column(STATUS).to_pylist(), Status.OK)
        return out

    def _items(self, batch: pa.Table) -> list[_Item]:
        ok = still_ok(batch)
        columns = list(dict.fromkeys([ID, MEDIA_TYPE, MEDIA_DIGEST, PIXELS, PIXELS_SHAPE, *self.scorer.inputs()]))
        items = []
        for i, row in enumerate(batch.select(columns).to_pylist()):
            if ok[i]:
                media = Media(row[MEDIA_TYPE], pixels_of(row[PIXELS], row[PIXELS_SHAPE]), row[MEDIA_DIGEST])
                items.append(_Item(i, row[ID], self.scorer.prompts(row, media.kind), media))
        return items

    async def _score_batch(self, items: list[_Item]) -> dict[int, np.ndarray | str]:
        """Row -> (prompts x tokens) log-probs in the item's request order, or the error message;
        with crash accounting when a ledger is configured."""
        if self.ledger is None or not items:
            return await self._score(items)
        key = hashlib.sha256("\0".join(sorted(i.id for i in items)).encode()).hexdigest()
        crashes = await self.ledger.start(key, [i.id for i in items])
        if not any(crashes.values()):
            async with self._batches.shared():
                await self.ledger.narrow(key, [i.id for i in items])
                results = await self._score(items)
        else:  # this batch crashed an actor before: one item at a time with nothing else in the
            # engine, so only the culprit pays when it crashes the actor again
            results = {}
            async with self._batches.alone():
                for item in items:
                    if crashes[item.id] >= self.options.max_crashes:
                        results[item.row] = (f"crashed the scoring engine {crashes[item.id]} times; "
                                             "not scored again (--max-crashes)")
                        continue
                    await self.ledger.narrow(key, [item.id])
                    results.update(await self._score([item]))
        await self.ledger.finish(key)
        return results

    async def _score(self, items: Sequence[_Item]) -> dict[int, np.ndarray | str]:
        if not items:
            return {}
        if self.options.faults is not None:
            self.options.faults.before_engine([r.text for item in items for r in item.requests])
        if self.engine.concurrent:
            answers = await asyncio.gather(*(self._score_item(item) for item in items))
            return {item.row: answer for item, answer in zip(items, answers)}
        async with self._one_call_at_a_time:
            return await asyncio.to_thread(self._bisect, items)

    async def _score_item(self, item: _Item) -> np.ndarray | str:
        try:
            return await self.engine.item_logprobs(item.requests, self.token_ids)
        except Exception as e:  # noqa: BLE001 - the item fails alone
            return self._failed(item, e)

    def _bisect(self, items: Sequence[_Item]) -> dict[int, np.ndarray | str]:
        requests = [r for item in items for r in item.requests]
        try:
            flat = self.engine.next_token_logprobs(requests, self.token_ids)
        except Exception as e:  # noqa: BLE001 - isolate the item that fails, keep the rest
            if len(items) == 1:
                return {items[0].row: self._failed(items[0], e)}
            self._end_if_fatal(e)
            half = len(items) // 2
            return {**self._bisect(items[:half]), **self._bisect(items[half:])}
        ends = np.cumsum([len(item.requests) for item in items])
        return {item.row: flat[end - len(item.requests):end] for item, end in zip(items, ends)}

    def _failed(self, item: _Item, error: BaseException) -> str:
        self._end_if_fatal(error)
        log.warning("scoring %s failed: %s: %s", item.id, type(error).__name__, error)
        return f"{type(error).__name__}: {error}"

    def _watch_engine(self) -> None:
        """A dead engine normally fails the requests in it, and the first failure ends the actor;
        if requests hang instead (a race inside the engine's clean-up), this thread ends it."""
        dead_since, grace_s = None, self.DEAD_ENGINE_GRACE_S
        while not self._stop_watchdog.wait(self.WATCHDOG_INTERVAL_S):
            if not self.engine.is_dead():
                dead_since = None
            elif dead_since is None:
                dead_since = time.monotonic()
            elif time.monotonic() - dead_since > grace_s:
                log.error("the engine's processes have gone and its requests did not fail within %.0f s; "
                          "ending this actor so Ray replaces it", grace_s)
                os._exit(70)

    def _end_if_fatal(self, error: BaseException) -> None:
        if self.engine.is_fatal(error):
            log.error("the engine cannot continue (%s: %s); ending this actor so Ray replaces it",
                      type(error).__name__, error)
            os._exit(70)

    def _columns(self, batch: pa.Table, items: list[_Item], results: dict[int, np.ndarray | str]) -> pa.Table:
        n = batch.num_rows
        status = batch.column(STATUS).to_pylist()
        error = batch.column(ERROR).to_pylist()
        columns: dict[str, list] = {f.name: [None] * n for f in self.scorer.fields()}
        for item in items:
            result = results[item.row]
            if isinstance(result, str):
                status[item.row], error[item.row] = Status.SCORE, result
                continue
            for name, value in self.scorer.columns(item.split(result)).items():
                columns[name][item.row] = value
        columns[STATUS], columns[ERROR] = status, error
        for name, value in self.options.provenance.as_dict().items():
            columns[name] = [value] * n
        out = with_columns(batch.drop_columns([PIXELS, PIXELS_SHAPE]), {
            name: pa.array(values, type=self.schema.field(name).type) for name, values in columns.items()
        })
        return conform(out, self.schema)


def _actor_logging() -> None:
    """The job's own INFO lines from this actor (where its model came from, ...) go to its Ray log
    file, which the run's log folder collects: Ray's workers configure no handler, and Python's
    last-resort one shows warnings only. (On a driver with a Console, the Console's handler stays.)"""
    job_log = logging.getLogger("qeval_ray")
    if not job_log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        job_log.addHandler(handler)
        job_log.setLevel(logging.INFO)


def _actor_name() -> str:
    import ray

    return ray.get_runtime_context().get_actor_id() or f"pid-{os.getpid()}"


def _local_model(options: ScoringOptions) -> EngineConfig:
    """Engines load from a local directory: the driver's resolved model fetched to this node first
    (once per node, however many actors it runs; see ``qeval_ray.models``)."""
    if options.model is None:
        return options.engine_config
    from qeval_ray.models import local_path

    # A local copy is that commit or content: the revision is spent (an engine would ask the hub).
    return dataclasses.replace(options.engine_config, model=local_path(options.model, options.storage), revision=None)
