"""The scores a curation reads: which files, their rows, the run's summary, and a duckdb view over them.

SCORES is the score job's output directory (its ``scores/`` is read, ``_summary.json`` gives the
provenance), its ``scores/`` directory, any directory of score parquet files (read recursively;
names starting with ``.`` or ``_`` are skipped, as the output layout says), a single file, or a
glob. Local files are read by duckdb's own parquet reader; object storage (s3://, gs://) through
a pyarrow dataset on the project's filesystems (``qeval_ray.storage``), which duckdb scans batch by
batch. Either way the rows stream: nothing here holds the table.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from qeval_ray import storage
from qeval_ray.contracts.layout import OutputLayout
from qeval_ray.curate.expression import quote

_GLOB_CHARS = "*?["
VIEW = "scores"


class SourceError(ValueError):
    """The scores cannot be read; the message says why."""


@dataclass
class ScoreSource:
    uri: str
    files: list[str]  # paths in ``fs``
    fs: object
    sizes: list[int]
    rows: list[int]
    summary: dict | None = None  # the score run's _summary.json, where there is one
    unfinished: bool = False  # a score output without _summary.json
    relative: list[str] = field(default_factory=list)  # file names as recorded (relative to SCORES)

    @property
    def total_rows(self) -> int:
        return sum(self.rows)

    def describe(self) -> dict:
        """What curation.json records about the input: the files (name, bytes, rows), not their mtimes."""
        return {"scores": storage.redact(self.uri), "rows": self.total_rows,
                "files": [{"name": n, "bytes": b, "rows": r} for n, b, r in zip(self.relative, self.sizes, self.rows)]}


def _summary_of(uri: str, options: storage.StorageOptions) -> tuple[dict | None, bool]:
    """The score run's summary when ``uri`` is a score output (or its scores/), and whether that
    output is unfinished (scores, no summary)."""
    candidates = [uri.rstrip("/")]
    if posixpath.basename(uri.rstrip("/")) == OutputLayout.SCORES:
        candidates.append(storage.parent(uri))
    for candidate in candidates:
        try:
            layout = OutputLayout(candidate, options)
            if layout.fs.exists(layout._path(OutputLayout.SCORES)):
                return layout.read_summary(), layout.is_unfinished()
        except Exception:  # noqa: BLE001 - not a score output: no summary to read
            continue
    return None, False


def open_source(uri: str, options: storage.StorageOptions) -> ScoreSource:
    import pyarrow.parquet as pq

    try:
        fs, path = storage.filesystem(uri, options)
        if any(c in path for c in _GLOB_CHARS):
            found, base = fs.glob(path), posixpath.dirname(path.split("*")[0].split("?")[0].split("[")[0])
        else:
            scores_uri = OutputLayout.scores_of(uri, options)
            fs, path = storage.filesystem(scores_uri, options)
            if fs.isdir(path):
                found, base = fs.find(path), path
            elif fs.exists(path):
                found, base = [path], posixpath.dirname(path)
            else:
                raise SourceError(f"no scores at {storage.redact(uri)}")
        files = []
        for p in sorted(found):
            rel = posixpath.relpath(p, base) if base else p
            if p.endswith(".parquet") and not any(part.startswith((".", "_")) for part in rel.split("/")):
                files.append(p)
        if not files:
            raise SourceError(f"no score parquet files at {storage.redact(uri)}")
        sizes, rows = [], []
        for p in files:
            sizes.append(int(fs.info(p)["size"]))
            with fs.open(p, "rb") as f:
                rows.append(pq.ParquetFile(f).metadata.num_rows)
    except SourceError:
        raise
    except Exception as e:  # noqa: BLE001 - storage libraries raise many types: one line says which problem
        raise SourceError(f"cannot read the scores at {storage.redact(uri)}: {storage.describe_error(e, uri)}") from e
    summary, unfinished = _summary_of(uri, options)
    relative = [posixpath.relpath(p, base) if base else posixpath.basename(p) for p in files]
    return ScoreSource(uri, files, fs, sizes, rows, summary, unfinished, relative)


def register(con, source: ScoreSource, options: storage.StorageOptions) -> None:
    """Create the view ``scores`` over the source's files in the duckdb connection ``con``."""
    if storage.is_local(source.uri):
        listing = ", ".join("'" + p.replace("'", "''") + "'" for p in source.files)
        con.execute(f"CREATE VIEW {VIEW} AS SELECT * FROM read_parquet([{listing}], union_by_name = true)")
        return
    import pyarrow as pa
    import pyarrow.dataset as pads

    arrow_fs, _ = storage.arrow_filesystem(source.uri, options)
    schemas = []
    for p in source.files:
        with source.fs.open(p, "rb") as f:
            import pyarrow.parquet as pq

            schemas.append(pq.ParquetFile(f).schema_arrow)
    dataset = pads.dataset(source.files, filesystem=arrow_fs, format="parquet",
                           schema=pa.unify_schemas(schemas, promote_options="permissive"))
    con.register("_scores_arrow", dataset)
    con.execute(f"CREATE VIEW {VIEW} AS SELECT * FROM {quote('_scores_arrow')}")
