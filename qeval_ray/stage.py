"""The base of every pipeline stage: a Ray Data batch UDF that keeps every row, exactly once.

Rows in = rows out is the job's first promise. Each stage returns one row per input row, in the
same order, and :meth:`Stage.__call__` checks it on every batch (as Ray's own LLM stage wrapper
checks that every input row is output once): a stage that drops, duplicates or reorders a row
fails loudly instead of losing data quietly. A row that cannot be processed stays in the batch
with a non-ok ``status`` and an ``error``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import pyarrow as pa
import pyarrow.compute as pc

from qeval_ray.schema import Status


class RowAccountingError(RuntimeError):
    """A stage returned a different set of rows than it was given: a bug, never a data problem."""


def check_rows(stage: str, before: pa.Table, after: pa.Table) -> None:
    if after.num_rows != before.num_rows:
        raise RowAccountingError(f"{stage} returned {after.num_rows} rows for {before.num_rows} input rows")
    if not after.column("id").equals(before.column("id")):
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


def pending(batch: pa.Table) -> list[bool]:
    """Which rows are still ``ok`` (a failed row is carried through later stages untouched)."""
    return pc.equal(batch.column("status"), Status.OK).fill_null(False).to_pylist()


def with_columns(table: pa.Table, columns: dict[str, pa.Array | list]) -> pa.Table:
    """``table`` with ``columns`` set (replaced where they exist, appended where not)."""
    for name, values in columns.items():
        array = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, array)
        else:
            table = table.append_column(name, array)
    return table
