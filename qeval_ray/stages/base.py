"""What every stage is: a Ray Data batch UDF that keeps every row exactly once, declared with the
columns it needs and adds and the Ray resources it asks for.

Rows in = rows out is the job's first promise. Each stage returns one row per input row, in the
same order, and :meth:`Stage.__call__` checks it on every batch (as Ray's own LLM stage wrapper
checks that every input row is output once): a stage that drops, duplicates or reorders a row
fails loudly instead of losing data quietly. A row that cannot be processed stays in the batch
with a non-ok ``status`` and an ``error``.

A :class:`StageSpec` says how Ray runs a stage (as Ray Data LLM's stages carry a UDF with its
constructor and ``map_batches`` arguments, and NeMo Curator's carry ``Resources`` and
``inputs()``/``outputs()``): stateless CPU tasks, or a pool of actors that each build something
expensive once (an engine). :func:`check_plan` proves, before anything runs, that every column a
stage needs is given by the manifest or by a stage before it.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from qeval_ray.contracts.schema import ID, STATUS, Status


class RowAccountingError(RuntimeError):
    """A stage returned a different set of rows than it was given: a bug, never a data problem."""


def check_rows(stage: str, before: pa.Table, after: pa.Table) -> None:
    if after.num_rows != before.num_rows:
        raise RowAccountingError(f"{stage} returned {after.num_rows} rows for {before.num_rows} input rows")
    if not after.column(ID).equals(before.column(ID)):
        raise RowAccountingError(f"{stage} changed, duplicated or reordered the ids of its batch")


class Stage(ABC):
    """Subclasses implement :meth:`process`; calling the stage checks the row accounting."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        batch = self.prepare(batch)
        out = self.process(batch)
        check_rows(type(self).__name__, batch, out)
        return out

    def prepare(self, batch: pa.Table) -> pa.Table:
        """Normalise an incoming batch (types, column order) before it is processed."""
        return batch

    @abstractmethod
    def process(self, batch: pa.Table) -> pa.Table: ...


class AsyncStage(Stage):
    """A stage whose ``process`` is a coroutine: Ray Data awaits several of its batches at once in
    one actor (outside Ray, ``asyncio.run(stage(batch))``)."""

    async def __call__(self, batch: pa.Table) -> pa.Table:
        batch = self.prepare(batch)
        out = await self.process(batch)
        check_rows(type(self).__name__, batch, out)
        return out


@dataclass(frozen=True)
class Resources:
    """What one task or actor of a stage asks Ray for (fractions allowed)."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory: int | None = None  # bytes of memory reserved per task or actor (None: none reserved)


@dataclass(frozen=True)
class StageSpec:
    """How Ray Data runs one stage, and the columns it needs and adds.

    ``actors`` is None for stateless tasks (``udf`` is then built here, once, and shipped to every
    task); otherwise ``udf`` is the class, built once in each of ``actors`` actors.
    """

    name: str
    udf: type[Stage]
    kwargs: dict[str, Any]
    needs: tuple[str, ...]
    adds: tuple[str, ...]
    batch_size: int
    resources: Resources = field(default_factory=Resources)
    actors: int | None = None
    # Batches each actor holds at once: an async stage (AsyncStage) works on all of them together;
    # for any stage the next is queued while one is processed.
    batches_in_flight_per_actor: int = 2

    def apply(self, ds):
        """``ds`` with this stage applied (lazily: nothing runs until the dataset is consumed)."""
        # Ray Data fuses a task stage into the actor stage after it only when they ask for the same
        # resources: stages that declare different ones always run apart.
        common = dict(batch_size=self.batch_size, batch_format="pyarrow", udf_modifying_row_count=False,
                      num_cpus=self.resources.cpus, num_gpus=self.resources.gpus or None,
                      memory=self.resources.memory)
        if self.actors is None:
            return ds.map_batches(self.udf(**self.kwargs), **common)
        import ray.data

        is_async = inspect.iscoroutinefunction(self.udf.__call__)
        pool = ray.data.ActorPoolStrategy(
            size=self.actors, max_tasks_in_flight_per_actor=self.batches_in_flight_per_actor,
            max_concurrent_calls_per_actor=self.batches_in_flight_per_actor if is_async else None)
        return ds.map_batches(self.udf, fn_constructor_kwargs=self.kwargs, compute=pool, **common)



class PlanError(ValueError):
    """A stage needs a column that neither the manifest nor an earlier stage provides: a bug."""


def check_plan(stages: Sequence[StageSpec], given: Sequence[str]) -> None:
    """Every column each stage needs is in ``given`` (the manifest's) or added by a stage before it."""
    available = set(given)
    for stage in stages:
        missing = [c for c in stage.needs if c not in available]
        if missing:
            raise PlanError(f"stage {stage.name!r} needs {', '.join(missing)}, which nothing before it provides")
        available.update(stage.adds)


def still_ok(batch: pa.Table) -> list[bool]:
    """Which rows are still ``ok`` (a failed row is carried through later stages untouched)."""
    return pc.equal(batch.column(STATUS), Status.OK).fill_null(False).to_pylist()


def with_columns(table: pa.Table, columns: dict[str, pa.Array | list]) -> pa.Table:
    """``table`` with ``columns`` set (replaced where they exist, appended where not)."""
    for name, values in columns.items():
        array = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, array)
        else:
            table = table.append_column(name, array)
    return table
