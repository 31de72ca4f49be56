"""The score stage (actors, one engine each): decoded items -> the scorer's prompts -> the engine ->
the scorer's columns.

Every prompt of one item (each aspect's; a long prompt's V2S parts) goes to the engine in the same
call, one after the other, so the media prefix is computed once per item. If a call fails, the
batch is split in halves (an item's prompts stay together) until the failing items are found:
they become ``score_error`` rows, the rest are scored. A poisonous item costs O(log batch) extra
calls, never the batch.

Items that kill the process instead are handled with Ray and the :mod:`crash ledger
<qeval_ray.stages.crash_ledger>`: a batch that crashed an actor is retried item by item, and an
item that crashed the engine ``max_crashes`` times becomes a ``score_error`` row. Engine errors
that leave the engine unusable (``Engine.is_fatal``) end the actor process on purpose, so Ray
replaces it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa

from qeval_ray import storage
from qeval_ray.contracts.schema import (
    ERROR,
    ID,
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
from qeval_ray.stages.base import Resources, Stage, StageSpec, still_ok, with_columns
from qeval_ray.stages.crash_ledger import LedgerClient
from qeval_ray.stages.decode import pixels_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoringOptions:
    engine: str
    engine_config: EngineConfig
    provenance: Provenance
    storage: storage.StorageOptions = storage.DEFAULT
    crash_ledger: object = None  # a CrashLedger or its actor handle (None: no crash accounting)
    max_crashes: int = 3  # crashes of one item before it is given up as a score_error row
    faults: object = None  # testing.faults.FaultInjection (tests only): called before each engine call


def score_stage(options: ScoringOptions, scorer: Scorer, manifest_schema: pa.Schema, *, actors: int,
                batch_size: int, resources: Resources) -> StageSpec:
    """A pool of ``actors`` actors, each holding one engine."""
    adds = (STATUS, ERROR, *(f.name for f in scorer.fields()), *options.provenance.as_dict())
    return StageSpec("score", ScoreStage, dict(options=options, scorer=scorer, manifest_schema=manifest_schema),
                     needs=(ID, STATUS, MEDIA_TYPE, PIXELS, PIXELS_SHAPE, *scorer.inputs()), adds=adds,
                     batch_size=batch_size, resources=resources, actors=actors)


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


class ScoreStage(Stage):
    """A callable class: Ray Data runs it in an actor pool and builds the engine once per actor."""

    def __init__(self, options: ScoringOptions, scorer: Scorer, manifest_schema: pa.Schema,
                 engine: Engine | None = None):
        self.options = options
        self.scorer = scorer
        self.schema = output_schema(manifest_schema, scorer.fields())  # pixels dropped
        self.engine = engine or load_engine(options.engine, _local_model(options))
        self.token_ids = self.engine.token_ids(scorer.tokens)
        self.ledger = LedgerClient(options.crash_ledger) if options.crash_ledger is not None else None

    def _items(self, batch: pa.Table) -> list[_Item]:
        ok = still_ok(batch)
        columns = list(dict.fromkeys([ID, MEDIA_TYPE, PIXELS, PIXELS_SHAPE, *self.scorer.inputs()]))
        items = []
        for i, row in enumerate(batch.select(columns).to_pylist()):
            if ok[i]:
                media = Media(row[MEDIA_TYPE], pixels_of(row[PIXELS], row[PIXELS_SHAPE]))
                items.append(_Item(i, row[ID], self.scorer.prompts(row, media.kind), media))
        return items

    def _score(self, items: Sequence[_Item]) -> dict[int, np.ndarray | str]:
        """Row -> (prompts x tokens) log-probs in the item's request order, or the error message."""
        if not items:
            return {}
        requests = [r for item in items for r in item.requests]
        if self.options.faults is not None:
            self.options.faults.before_engine([r.text for r in requests])
        try:
            flat = self.engine.next_token_logprobs(requests, self.token_ids)
        except Exception as e:  # noqa: BLE001 - isolate the item that fails, keep the rest
            if self.engine.is_fatal(e):
                log.error("the engine cannot continue (%s: %s); ending this actor so Ray replaces it",
                          type(e).__name__, e)
                os._exit(70)
            if len(items) == 1:
                log.warning("scoring row %d failed: %s", items[0].row, e)
                return {items[0].row: f"{type(e).__name__}: {e}"}
            half = len(items) // 2
            return {**self._score(items[:half]), **self._score(items[half:])}
        ends = np.cumsum([len(item.requests) for item in items])
        return {item.row: flat[end - len(item.requests):end] for item, end in zip(items, ends)}

    def _score_batch(self, items: list[_Item]) -> dict[int, np.ndarray | str]:
        """Score a batch, with crash accounting when a ledger is configured."""
        if self.ledger is None or not items:
            return self._score(items)
        key = hashlib.sha256("\0".join(sorted(i.id for i in items)).encode()).hexdigest()
        crashes = self.ledger.start(key, [i.id for i in items])
        if not any(crashes.values()):
            results = self._score(items)
        else:  # this batch crashed an actor before: one item at a time, so only the culprit pays
            results = {}
            for item in items:
                if crashes[item.id] >= self.options.max_crashes:
                    results[item.row] = (f"crashed the scoring engine {crashes[item.id]} times; "
                                         "not scored again (--max-crashes)")
                    continue
                self.ledger.narrow(key, [item.id])
                results.update(self._score([item]))
        self.ledger.finish(key)
        return results

    def process(self, batch: pa.Table) -> pa.Table:
        items = self._items(batch)
        results = self._score_batch(items)
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


def _local_model(options: ScoringOptions) -> EngineConfig:
    """Engines load from a hub id or a local directory: a model on object storage is copied to
    this node's cache first (once per node, however many actors it runs)."""
    model = options.engine_config.model
    if "://" not in model or storage.is_local(model):
        return options.engine_config
    return dataclasses.replace(options.engine_config, model=storage.localize_dir(model, options.storage))
