"""Columns and statuses: what the manifest gives, what travels between stages, what is written.

One place for each name: a stage, a scorer or a report that needs a column or a status imports it
from here. A scorer's own score columns are declared by the scorer (``Scorer.fields``) and placed
by :func:`output_schema`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Iterable

import pyarrow as pa

MEDIA_TYPES = ("image", "video")

# --- input manifest -----------------------------------------------------------------------------

ID, URI, PROMPT, MEDIA_TYPE, MODEL = "id", "uri", "prompt", "media_type", "model"
REQUIRED_COLUMNS = (ID, URI, PROMPT)
# Vague-to-Specific parts of a long prompt (see qeval_ray.v2s): a summary, and sub-prompts.
V2S_VAGUE = "v2s_vague"
V2S_SPECIFIC = "v2s_specific"
# Human labels, per aspect, on any scale (reports correlate scores with them).
LABEL_COLUMNS = {"quality": "quality_mos", "alignment": "alignment_mos"}
# A label cell that is one of these texts (spaces trimmed, any case) is a missing label, in every
# manifest format alike: CSV cells, JSON strings, parquet text columns. Any other text must be a
# number. (A null, and a float NaN, are missing too.)
MISSING_LABEL_TEXTS = ("", "na", "n/a", "nan", "null", "none")
# Columns the job understands, with the types it reads them as (others pass through untouched).
MANIFEST_TYPES: dict[str, pa.DataType] = {
    ID: pa.string(),
    URI: pa.string(),
    PROMPT: pa.string(),
    MEDIA_TYPE: pa.string(),
    MODEL: pa.string(),
    **{label: pa.float64() for label in LABEL_COLUMNS.values()},
    V2S_VAGUE: pa.string(),
    V2S_SPECIFIC: pa.list_(pa.string()),
}




class LabelError(ValueError):
    """A label that is neither a number nor missing; ``row`` is its 0-based index in the column."""

    def __init__(self, column: str, row: int, value):
        self.column, self.row, self.value = column, row, value
        super().__init__(f"column {column!r}: {value!r} is not a number")


def missing_label_texts() -> str:
    """The missing-label texts as a user reads them."""
    return "empty, null, or one of " + ", ".join(repr(t) for t in MISSING_LABEL_TEXTS if t) + " (any case)"


def parse_labels(column: pa.Array | pa.ChunkedArray, name: str) -> pa.Array:
    """A label column as float64: numbers as they are; texts that are numbers, parsed; the
    :data:`MISSING_LABEL_TEXTS`, nulls and NaN as null. Anything else raises :class:`LabelError`
    naming the first bad row."""
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], column.type)
    kind = column.type
    if pa.types.is_null(kind):
        return pa.nulls(len(column), pa.float64())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        text = pc.utf8_trim_whitespace(column)
        missing = pc.is_in(pc.utf8_lower(text), value_set=pa.array(MISSING_LABEL_TEXTS))
        text = pc.if_else(missing, pa.scalar(None, text.type), text)
        try:
            values = text.cast(pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            row = _first_failing_cast(text)
            raise LabelError(name, row, column[row].as_py()) from None
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        values = column.cast(pa.float64())
    else:  # booleans, lists, structs: not a label
        row = pc.index(pc.is_valid(column), True).as_py()
        if row < 0:
            return pa.nulls(len(column), pa.float64())
        raise LabelError(name, row, column[row].as_py())
    return pc.if_else(pc.is_nan(values), pa.scalar(None, pa.float64()), values)


def _first_failing_cast(text: pa.Array) -> int:
    """The first row whose text does not cast to float64 (bisection: a few casts, not one per row)."""
    lo, hi = 0, len(text)  # text[:lo] casts; text[:hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            text.slice(0, mid).cast(pa.float64())
            lo = mid
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            hi = mid
    return lo


# --- row status ---------------------------------------------------------------------------------

STATUS, ERROR = "status", "error"


class Status:
    """What happened to a row: ``ok``, or the stage where it failed (the reason is in ``error``)."""

    OK = "ok"
    INVALID = "invalid_row"  # the manifest row itself cannot be scored (no uri, empty prompt, ...)
    FETCH = "fetch_error"  # the media bytes could not be read from storage
    DECODE = "decode_error"  # the bytes are not a decodable image/video, or are refused (bombs)
    SCORE = "score_error"  # the engine failed on this item

    ALL = (OK, INVALID, FETCH, DECODE, SCORE)


# --- output -------------------------------------------------------------------------------------

_CORE_FIELDS = [
    pa.field(ID, pa.string(), nullable=False),
    pa.field(URI, pa.string()),
    pa.field(MEDIA_TYPE, pa.string()),
    pa.field(MODEL, pa.string()),
    pa.field(PROMPT, pa.string()),
    pa.field(STATUS, pa.string(), nullable=False),
    pa.field(ERROR, pa.string()),
]
# What the model saw: the decoded size (per frame for videos), for videos the sampling, and the
# content digest of the pixels (equal for equal media however they are named).
MEDIA_DIGEST = "media_digest"
MEDIA_FIELDS = [
    pa.field("media_height", pa.int32()),
    pa.field("media_width", pa.int32()),
    pa.field("num_frames", pa.int32()),
    pa.field("source_fps", pa.float64()),
    pa.field("source_frames", pa.int32()),
    pa.field("sample_fps", pa.float64()),
    pa.field(MEDIA_DIGEST, pa.string()),  # the decoded pixels' content digest (media.pixel_digest)
]
# How the row's media was read: retries of transient storage errors (throttling, 5xx, resets).
FETCH_RETRIES = "fetch_retries"
FETCH_FIELDS = [pa.field(FETCH_RETRIES, pa.int32())]


@dataclass(frozen=True)
class Provenance:
    """What produced a score: written on every row and in the run summary
    (computed by :mod:`qeval_ray.provenance`)."""

    scorer_model: str
    scorer_revision: str
    prompt_version: str
    engine: str
    dtype: str
    code_version: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


PROVENANCE_FIELDS = [pa.field(f.name, pa.string()) for f in fields(Provenance)]

# Columns that only travel between stages (decoded pixels); never written.
PIXELS = "_pixels"
PIXELS_SHAPE = "_pixels_shape"
INTERNAL_FIELDS = [pa.field(PIXELS, pa.large_binary()), pa.field(PIXELS_SHAPE, pa.list_(pa.int32()))]


def output_schema(manifest_schema: pa.Schema, score_fields: Iterable[pa.Field]) -> pa.Schema:
    """The score parquet schema: our columns first (the scorer's after the status), then every
    other manifest column as it came."""
    fields = _CORE_FIELDS + list(score_fields) + MEDIA_FIELDS + FETCH_FIELDS + PROVENANCE_FIELDS
    ours = {f.name for f in fields}
    passthrough = [f for f in manifest_schema if f.name not in ours]
    return pa.schema(fields + passthrough)


def decoded_schema(manifest_schema: pa.Schema, score_fields: Iterable[pa.Field]) -> pa.Schema:
    """Between decode and score: the output columns plus the decoded pixels."""
    return pa.schema(list(output_schema(manifest_schema, score_fields)) + INTERNAL_FIELDS)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Give ``table`` exactly ``schema``: missing columns become nulls, types are cast, order fixed.

    Explicit schemas keep every block alike, so parquet files and Ray's schema unification never
    see a column that is null-typed in one batch and string-typed in the next.
    """
    columns = []
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            columns.append(col if col.type == field.type else col.cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema)
