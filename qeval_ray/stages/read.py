"""The read stage: validate the input manifest (parquet, jsonl or csv; one file, a directory or a
glob), then stream its rows.

:func:`open_manifest` runs on the driver before any work starts and stops the job with one
:class:`ManifestError` saying what to fix: an unreadable file, a missing required column, missing
or duplicate ids (named), a label that is neither a number nor missing (named by column, row and
id). It streams the manifest and keeps only the id column. :func:`read_rows` then streams the rows
through Ray Data's readers, so the run itself reads in parallel on the cluster (and Ray Data's
checkpointing can filter rows by id).

Labels are read as text from CSV and parsed by ``contracts.schema.parse_labels`` on the driver and
in the decode stage alike, so which texts mean "missing" is decided in one place for every format,
not by each reader's own list. JSON Lines files go through :func:`read_json_table` on both sides.
"""

from __future__ import annotations

import contextlib
import posixpath
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from qeval_ray import storage
from qeval_ray.contracts.schema import (
    ID,
    LABEL_COLUMNS,
    MANIFEST_TYPES,
    REQUIRED_COLUMNS,
    V2S_SPECIFIC,
    V2S_VAGUE,
    LabelError,
    conform,
    missing_label_texts,
    parse_labels,
)

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "json", ".json": "json", ".ndjson": "json", ".csv": "csv"}
_GLOB_CHARS = "*?["
_MAX_NAMED = 10  # ids named in an error message


class ManifestError(ValueError):
    """The manifest cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class Manifest:
    uri: str
    format: str  # parquet | json | csv
    paths: tuple[str, ...]  # inside ``filesystem``
    schema: pa.Schema  # the columns as the job reads them (known columns with their fixed types)
    num_rows: int
    base_dir: str  # relative media uris are resolved against this
    storage: storage.StorageOptions = storage.DEFAULT
    ids_digest: str = ""  # order-independent hash of the ids: which rows the output must hold

    @property
    def has_labels(self) -> bool:
        return any(name in self.schema.names for name in LABEL_COLUMNS.values())

    def read(self):
        """The manifest as a Ray dataset, straight from Ray Data's readers (nothing fused ahead of
        the next stage, so the job can split it into small blocks). Blocks come as the files have
        them; the decode stage conforms them to ``schema``."""
        import ray.data

        fs, _ = storage.arrow_filesystem(self.uri, self.storage)
        paths = list(self.paths)
        if self.format == "parquet":
            return ray.data.read_parquet(paths, filesystem=fs)
        if self.format == "csv":
            return ray.data.read_csv(paths, filesystem=fs, convert_options=_csv_convert(self.schema))
        return ray.data.read_datasource(_json_lines_datasource()(paths, filesystem=fs))


def read_rows(manifest: Manifest, rows_per_block: int):
    """The manifest's rows in small blocks: decode tasks run in parallel however the manifest is
    laid out, actors share the work, and scores are committed file by file as they come (a crash
    loses little)."""
    return manifest.read().repartition(target_num_rows_per_block=rows_per_block)


def _format_of(path: str) -> str | None:
    return FORMATS.get(posixpath.splitext(path)[1].lower())


def _list_files(uri: str, options: storage.StorageOptions) -> tuple[tuple[str, ...], str]:
    """The manifest's files, and the directory relative media uris are resolved against."""
    fs, path = storage.filesystem(uri, options)
    if any(c in path for c in _GLOB_CHARS):
        found, base_dir = fs.glob(path), storage.parent(uri)
    elif fs.isdir(path):
        found, base_dir = fs.find(path), uri.rstrip("/")
    elif fs.exists(path):
        return (path,), storage.parent(uri)
    else:
        raise ManifestError(f"manifest not found: {storage.redact(uri)}")
    files = sorted(p for p in found if _format_of(p) and not posixpath.basename(p).startswith((".", "_")))
    if not files:
        raise ManifestError(f"no manifest files (.parquet, .jsonl, .csv) at {uri}")
    return tuple(files), base_dir


def _csv_convert(schema: pa.Schema):
    """Known columns with their types, labels as text: which texts are missing labels is decided by
    :func:`~qeval_ray.contracts.schema.parse_labels` for every format, not by the CSV reader."""
    import pyarrow.csv as pacsv

    labels = set(LABEL_COLUMNS.values())
    return pacsv.ConvertOptions(column_types={f.name: pa.string() if f.name in labels else f.type for f in schema})


def conform_manifest(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    """A block as the readers give it, with the manifest ``schema`` the driver validated: labels
    parsed by the one rule (texts that mean missing become null), then every column cast."""
    for name in LABEL_COLUMNS.values():
        if name in batch.column_names:
            batch = batch.set_column(batch.column_names.index(name), name, parse_labels(batch.column(name), name))
    return conform(batch, schema)


def _csv_schema(fs, path: str) -> pa.Schema:
    """CSV is untyped: known columns get their types, every other column is read as text."""
    import pyarrow.csv as pacsv

    with fs.open(path, "rb") as f:
        header = pacsv.open_csv(f, convert_options=pacsv.ConvertOptions(column_types={})).schema.names
    if V2S_SPECIFIC in header:
        raise ManifestError(f"manifest {path}: column {V2S_SPECIFIC!r} holds a list of texts, which CSV cannot "
                            "carry; write the manifest as parquet or jsonl")
    return pa.schema([(name, MANIFEST_TYPES.get(name, pa.string())) for name in header])


def _batches(fmt: str, fs, paths: tuple[str, ...]) -> Iterator[tuple[str, pa.RecordBatch | pa.Table]]:
    """Stream the manifest (JSON one file at a time: its types are inferred over the whole file)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        for path in paths:
            with fs.open(path, "rb") as f:
                pf = pq.ParquetFile(f)
                known = [c for c in pf.schema_arrow.names if c in MANIFEST_TYPES]
                for batch in pf.iter_batches(columns=known, batch_size=65536):
                    yield path, batch
                yield path, pf.schema_arrow.empty_table()  # the full schema, for unification
    elif fmt == "csv":
        import pyarrow.csv as pacsv

        for path in paths:
            schema = _csv_schema(fs, path)
            with fs.open(path, "rb") as f:
                for batch in pacsv.open_csv(f, convert_options=_csv_convert(schema)):
                    yield path, batch
            yield path, schema.empty_table()
    else:
        for path in paths:
            with fs.open(path, "rb") as f:
                yield path, read_json_table(f.read())


def read_json_table(data: bytes) -> pa.Table:
    """One JSON Lines file as a table, the same on the driver and in Ray's read tasks.

    pyarrow's reader first. It refuses a column whose values change type, which the label rule
    allows (``3.5`` in one row, ``"n/a"`` in the next): then the file is parsed with Python's json
    module, labels as text for :func:`parse_labels`.
    """
    import io

    import pyarrow.json as pajson

    block = 1 << 20
    while True:
        try:
            return pajson.read_json(io.BytesIO(data), read_options=pajson.ReadOptions(block_size=block))
        except pa.ArrowInvalid as e:
            if "straddl" in str(e) and block < len(data):  # a line longer than a block
                block *= 4
                continue
            if not any(f"Column(/{name})" in str(e) for name in LABEL_COLUMNS.values()):
                raise
            return _json_lines_by_python(data)


def _json_lines_by_python(data: bytes) -> pa.Table:
    import json

    rows = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
    if not all(isinstance(row, dict) for row in rows):
        raise ValueError("every line of a JSON Lines manifest must be one JSON object")
    labels = set(LABEL_COLUMNS.values())
    names = list(dict.fromkeys(name for row in rows for name in row))
    columns = {}
    for name in names:
        values = [row.get(name) for row in rows]
        if name in labels:  # numbers, texts, anything else: as text, judged by parse_labels
            values = [v if v is None or isinstance(v, str) else json.dumps(v) for v in values]
            columns[name] = pa.array(values, pa.string())
        else:
            columns[name] = pa.array(values)
    return pa.table(columns)


def _json_lines_datasource():
    """Ray Data's file datasource reading each file with :func:`read_json_table` (built on first
    use: importing this module must not import Ray)."""
    from ray.data.datasource import FileBasedDatasource

    class JsonLinesDatasource(FileBasedDatasource):
        def _read_stream(self, f, path: str):
            yield read_json_table(f.read_buffer().to_pybytes())

    return JsonLinesDatasource


def _ids_digest(ids: pa.ChunkedArray) -> str:
    """An order-independent fingerprint of the ids: the sum of their 64-bit hashes (pandas')."""
    from pandas.util import hash_array

    total = 0
    for chunk in ids.chunks:
        total = (total + int(hash_array(chunk.to_numpy(zero_copy_only=False)).sum(dtype="uint64"))) % 2**64
    return f"{len(ids)}:{total:016x}"


def _check_ids(uri: str, ids: pa.ChunkedArray) -> None:
    nulls = ids.null_count
    if nulls:
        first = pc.index(pc.is_null(ids), True).as_py()
        raise ManifestError(f"manifest {uri}: {nulls} row(s) have no id (the first is row {first}); every row needs a unique id")
    counts = pc.value_counts(ids)
    dup = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(dup):
        named = ", ".join(f"{v['values']!r} (x{v['counts']})" for v in dup.to_pylist()[:_MAX_NAMED])
        more = f" and {len(dup) - _MAX_NAMED} more" if len(dup) > _MAX_NAMED else ""
        raise ManifestError(f"manifest {uri}: {len(dup)} duplicate id(s): {named}{more}; ids must be unique")


def _parsed_labels(what: str, path: str | None, batch, offset: int) -> dict[str, pa.Array]:
    """The batch's labels by :func:`parse_labels`; a value that is neither a number nor missing is
    one line naming the column, the row (counted from 1 in its file, a CSV header not counted) and
    the row's id."""
    parsed = {}
    for name in LABEL_COLUMNS.values():
        if name not in batch.schema.names:
            continue
        try:
            parsed[name] = parse_labels(batch.column(name), name)
        except LabelError as e:
            row_id = batch.column(ID)[e.row].as_py()
            where = f"row {offset + e.row + 1}" + (f" of {posixpath.basename(path)}" if path else "")
            raise ManifestError(
                f"{what}: column {name!r}, {where} (id {str(row_id)!r}): {e.value!r} is not a number; "
                f"a label is a number, or missing: {missing_label_texts()}") from None
    return parsed


@contextlib.contextmanager
def _one_line_read_errors(what: str, uri: str):
    """A storage problem or a file that is not what it says, met while reading ``what``: one line."""
    try:
        yield
    except ManifestError:
        raise
    except Exception as e:  # noqa: BLE001 - storage and parsing libraries raise many types
        if not (storage.storage_problem(e, uri) or isinstance(e, (pa.ArrowInvalid, OSError, ValueError))):
            raise
        raise ManifestError(f"cannot read {what}: {storage.describe_error(e, uri)}") from e


def read_labels(uri: str, options: storage.StorageOptions = storage.DEFAULT, what: str | None = None) -> pa.Table:
    """A labels file (parquet, JSON Lines or CSV, as a manifest): ``id`` and the label columns,
    the labels parsed by the same rule as a manifest's. Raises :class:`ManifestError`."""
    what = what or storage.redact(uri)
    try:
        paths, _ = _list_files(uri, options)
    except ManifestError:
        raise
    except Exception as e:  # noqa: BLE001 - one line says which storage problem
        raise ManifestError(f"{what}: {storage.describe_error(e, uri)}") from e
    formats = {_format_of(p) for p in paths}
    if len(formats) > 1:
        raise ManifestError(f"{what} mixes formats ({', '.join(sorted(formats))}); use one")
    fs, _ = storage.filesystem(uri, options)
    fields = [pa.field(ID, pa.string())] + [pa.field(name, pa.float64()) for name in LABEL_COLUMNS.values()]
    parts, file_rows = [], {}
    with _one_line_read_errors(what, uri):
        for path, batch in _batches(formats.pop(), fs, paths):
            if batch.num_rows == 0:
                continue
            if ID not in batch.schema.names:
                raise ManifestError(f"{what}: no {ID!r} column to join on")
            labels = _parsed_labels(what, path if len(paths) > 1 else None, batch, file_rows.get(path, 0))
            file_rows[path] = file_rows.get(path, 0) + batch.num_rows
            parts.append(conform(pa.table({ID: batch.column(ID).cast(pa.string()), **labels}), pa.schema(fields)))
    return pa.concat_tables(parts) if parts else pa.schema(fields).empty_table()


def open_manifest(uri: str, options: storage.StorageOptions = storage.DEFAULT, needs_v2s: bool = False) -> Manifest:
    """Find, read through and validate the manifest at ``uri``; raise :class:`ManifestError`.
    ``needs_v2s``: the run scores long prompts in parts, so the V2S columns must be there."""
    try:
        paths, base_dir = _list_files(uri, options)
    except ManifestError:
        raise
    except Exception as e:  # noqa: BLE001 - storage libraries raise many types: one line says which problem
        raise ManifestError(f"manifest {storage.redact(uri)}: {storage.describe_error(e, uri)}") from e
    formats = {_format_of(p) for p in paths}
    if len(formats) > 1:
        raise ManifestError(f"manifest {uri} mixes formats ({', '.join(sorted(formats))}); use one")
    fmt = formats.pop()
    fs, _ = storage.filesystem(uri, options)
    schemas, id_chunks, num_rows = [], [], 0
    file_rows: dict[str, int] = {}  # rows of each file seen so far: a bad label's row number in its file
    with _one_line_read_errors(f"manifest {storage.redact(uri)}", uri):
        for path, batch in _batches(fmt, fs, paths):
            # Known columns are read as their fixed types whatever a file holds (checked below).
            schemas.append(pa.schema([pa.field(f.name, MANIFEST_TYPES.get(f.name, f.type)) for f in batch.schema]))
            if batch.num_rows == 0:
                continue
            missing = [c for c in REQUIRED_COLUMNS if c not in batch.schema.names]
            if missing:
                raise ManifestError(
                    f"manifest {uri} has no column {', '.join(map(repr, missing))} "
                    f"(required: {', '.join(REQUIRED_COLUMNS)}; found: {', '.join(batch.schema.names)})"
                )
            _parsed_labels(f"manifest {storage.redact(uri)}", path if len(paths) > 1 else None, batch,
                           file_rows.get(path, 0))
            file_rows[path] = file_rows.get(path, 0) + batch.num_rows
            for name in batch.schema.names:
                if name in MANIFEST_TYPES and name not in LABEL_COLUMNS.values():
                    try:
                        column = batch.column(name).cast(MANIFEST_TYPES[name])
                    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                        raise ManifestError(
                            f"manifest {uri}: column {name!r} cannot be read as {MANIFEST_TYPES[name]} ({e})"
                        ) from e
                    if name == "id":
                        id_chunks.append(column)
            num_rows += batch.num_rows
    if num_rows == 0:
        raise ManifestError(f"manifest {uri} has no rows")
    try:
        unified = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ManifestError(f"manifest {uri}: its files disagree on column types ({e})") from e
    schema = pa.schema([
        pa.field(f.name, MANIFEST_TYPES.get(f.name, pa.string() if pa.types.is_null(f.type) else f.type))
        for f in unified
    ])
    lacking = [name for name in (V2S_VAGUE, V2S_SPECIFIC) if name not in schema.names]
    if needs_v2s and lacking:
        raise ManifestError(
            f"--v2s scores long prompts in parts from the manifest columns {V2S_VAGUE!r} (text) and "
            f"{V2S_SPECIFIC!r} (list of texts), but {storage.redact(uri)} has no {' or '.join(map(repr, lacking))}"
        )
    ids = pa.chunked_array(id_chunks, type=pa.string())
    _check_ids(uri, ids)
    return Manifest(uri, fmt, paths, schema, num_rows, base_dir, options, _ids_digest(ids))
