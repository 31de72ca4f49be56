"""The write stage: scores into parquet files, committed with the ids they hold, resumable.

Resume: a rerun of the same command into the same output continues where the last run stopped.
Ray Data's checkpointing does the work (the read skips ids already checkpointed; each data file is
committed with its checkpoint in two phases, and files of an interrupted commit are deleted before
the rerun reads), because it is the library's own exactly-once mechanism for file sinks and needs
nothing beyond an id column. Each parquet file appears whole (``storage.arrow_filesystem(
atomic_writes=True)``).
"""

from __future__ import annotations

import contextlib
import functools

from qeval_ray import storage
from qeval_ray.contracts.layout import OutputLayout
from qeval_ray.contracts.schema import ID


@contextlib.contextmanager
def checkpointing(layout: OutputLayout):
    """Ray Data checkpointing on ``id`` for datasets created inside (they copy the context then)."""
    import ray.data
    from ray.data.checkpoint import CheckpointConfig

    checkpoint_fs, checkpoint_path = storage.arrow_filesystem(layout.checkpoint, layout.storage)
    context = ray.data.DataContext.get_current()
    context.checkpoint_config = CheckpointConfig(
        id_column=ID, checkpoint_path=checkpoint_path, override_filesystem=checkpoint_fs,
        # Kept after success: a rerun over a finished output must find every id already done.
        delete_checkpoint_on_success=False,
        checkpoint_filter_cls=string_id_checkpoint_filter(),
    )
    # Filtering is a binary search per block: two actors are plenty, and each takes a CPU that
    # decode tasks would otherwise lack on a small node (a resumed run could then never decode).
    context.checkpoint_config.checkpoint_actor_pool_max_size = 2
    try:
        yield
    finally:
        context.checkpoint_config = None


@functools.cache
def string_id_checkpoint_filter():
    """Ray Data's checkpoint filter, matching ids as strings (built on first use: importing this
    module must not import Ray).

    The filter runs inside the read, on the manifest's own id column, which may hold integers
    (parquet, JSON); the checkpoint holds the ids as written, which are strings. Without the cast
    no id would match and a resume would score everything again.
    """
    import pyarrow as pa
    from ray.data.checkpoint.checkpoint_filter import NumpyArrayBasedCheckpointFilter

    class StringIdCheckpointFilter(NumpyArrayBasedCheckpointFilter):
        def filter_rows_for_block(self, block):
            ids = block[self.id_column]
            if not pa.types.is_string(ids.type):
                block = block.set_column(block.column_names.index(self.id_column), self.id_column,
                                         ids.cast(pa.string()))
            return super().filter_rows_for_block(block)

    return StringIdCheckpointFilter


def write_scores(ds, layout: OutputLayout, rows_per_file: int, started: float) -> int:
    """Run the dataset into parquet files of about ``rows_per_file`` rows, appended to scores/;
    returns how many rows this run wrote."""
    from ray.data import SaveMode

    before = layout.score_files()
    fs, path = storage.arrow_filesystem(layout.scores, layout.storage, atomic_writes=True)
    ds.write_parquet(path, filesystem=fs, mode=SaveMode.APPEND, min_rows_per_file=rows_per_file,
                     filename_provider=score_file_names(started))
    return sum(rows for name, rows in layout.score_files().items() if name not in before)


def score_file_names(started: float):
    """``scores-20261202T061502-000012-<write id>.parquet``: the run's start (UTC), the write task,
    the write's id (Ray Data requires it in appended files). Deterministic per write and task (its
    checkpointing needs that), sorted by run, and unique across the runs of one output."""
    import time

    from ray.data.datasource import FilenameProvider

    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started))

    class ScoreFileNames(FilenameProvider):
        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return f"scores-{stamp}-{task_index:06d}-{write_uuid}.parquet"

    return ScoreFileNames(file_format="parquet")
