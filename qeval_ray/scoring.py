"""The score stage (actors, one engine each): decoded items -> engine requests -> score columns.

Every aspect of one item goes to the engine in the same call, one after the other, so the media
prefix is computed once per item. If a call fails, the batch is split in halves (an item's aspects
stay together) until the failing items are found: they become ``score_error`` rows, the rest are
scored. A poisonous item costs O(log batch) extra calls, never the batch.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa

from qeval_ray import storage
from qeval_ray.decode import pixels_of
from qeval_ray.engines.base import Engine, EngineConfig, Media, ScoreRequest, load_engine
from qeval_ray.prompts import context_prompt
from qeval_ray.rating import rating_probabilities, score_from_probabilities
from qeval_ray.schema import PIXELS, PIXELS_SHAPE, Provenance, Status, conform, probability_columns
from qeval_ray.stage import Stage, pending, with_columns

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoringOptions:
    engine: str
    engine_config: EngineConfig
    aspects: tuple[str, ...]
    provenance: Provenance
    storage: storage.StorageOptions = storage.DEFAULT


@dataclass
class _Item:
    row: int  # position in the batch
    requests: list[ScoreRequest]  # one per aspect, in ``aspects`` order


class ScoreStage(Stage):
    """A callable class: Ray Data runs it in an actor pool and builds the engine once per actor."""

    def __init__(self, options: ScoringOptions, schema: pa.Schema, engine: Engine | None = None):
        self.options = options
        self.schema = schema  # the output schema (pixels dropped)
        self.engine = engine or load_engine(options.engine, _local_model(options))

    def _items(self, batch: pa.Table) -> list[_Item]:
        ok = pending(batch)
        rows = batch.select(["media_type", "prompt", PIXELS, PIXELS_SHAPE]).to_pylist()
        items = []
        for i, row in enumerate(rows):
            if not ok[i]:
                continue
            media = Media(row["media_type"], pixels_of(row[PIXELS], row[PIXELS_SHAPE]))
            texts = [context_prompt(aspect, media.kind, row["prompt"]) for aspect in self.options.aspects]
            items.append(_Item(i, [ScoreRequest(media, t) for t in texts]))
        return items

    def _score(self, items: Sequence[_Item]) -> dict[int, np.ndarray | str]:
        """Row -> (aspects x 5) log-probs, or the error message for rows that failed."""
        if not items:
            return {}
        try:
            flat = self.engine.rating_logprobs([r for item in items for r in item.requests])
        except Exception as e:  # noqa: BLE001 - isolate the item that fails, keep the rest
            if len(items) == 1:
                log.warning("scoring row %d failed: %s", items[0].row, e)
                return {items[0].row: f"{type(e).__name__}: {e}"}
            half = len(items) // 2
            return {**self._score(items[:half]), **self._score(items[half:])}
        per_item = flat.reshape(len(items), len(self.options.aspects), -1)
        return {item.row: per_item[k] for k, item in enumerate(items)}

    def process(self, batch: pa.Table) -> pa.Table:
        results = self._score(self._items(batch))
        n = batch.num_rows
        status = batch.column("status").to_pylist()
        error = batch.column("error").to_pylist()
        columns: dict[str, list] = {}
        for a, aspect in enumerate(self.options.aspects):
            scores: list[float | None] = [None] * n
            probs: list[list[float | None]] = [[None] * n for _ in probability_columns(aspect)]
            for row, result in results.items():
                if isinstance(result, str):
                    continue
                p = rating_probabilities(result[a])
                scores[row] = float(score_from_probabilities(p))
                for k, value in enumerate(p):
                    probs[k][row] = float(value)
            columns[aspect] = scores
            columns.update(zip(probability_columns(aspect), probs))
        for row, result in results.items():
            if isinstance(result, str):
                status[row], error[row] = Status.SCORE, result
        columns["status"], columns["error"] = status, error
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
