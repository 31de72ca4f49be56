"""The decode stage (CPU tasks): check each row, fetch its media bytes, decode them to pixels.

A row that fails here keeps its place with ``status`` = ``invalid_row`` / ``fetch_error`` /
``decode_error`` and the reason in ``error``; later stages pass it through untouched. The scorer
is asked first whether it can score the row at all, so a row it would refuse costs no download.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from qeval_ray import media, storage
from qeval_ray.contracts.schema import (
    ERROR,
    FETCH_RETRIES,
    ID,
    MEDIA_DIGEST,
    MEDIA_FIELDS,
    MEDIA_TYPE,
    MEDIA_TYPES,
    PIXELS,
    PIXELS_SHAPE,
    STATUS,
    URI,
    Status,
    conform,
    decoded_schema,
)
from qeval_ray.scorers.base import Scorer
from qeval_ray.stages.base import Resources, Stage, StageSpec, with_columns
from qeval_ray.stages.read import conform_manifest


@dataclass(frozen=True)
class DecodeOptions:
    image: media.ImageOptions = field(default_factory=media.ImageOptions)
    video: media.VideoOptions = field(default_factory=media.VideoOptions)
    max_bytes: int = storage.DEFAULT_MAX_BYTES  # refuse larger objects before downloading them
    base_dir: str | None = None  # relative uris in the manifest are relative to this
    storage: storage.StorageOptions = field(default_factory=storage.StorageOptions)


# The columns this stage sets on every row (the rest of the output schema stays null until scored).
ADDS = (MEDIA_TYPE, STATUS, ERROR, *(f.name for f in MEDIA_FIELDS), FETCH_RETRIES, PIXELS, PIXELS_SHAPE)


# Memory reserved per decode task: the stage's peak on a 60 s 1080p clip was 389 MB (README,
# benchmarks/decode.py). Declaring it also keeps decoding out of the scoring actors: Ray Data fuses
# only stages that ask for the same resources, and decoding inside an actor would stall its engine.
DECODE_MEMORY = 512 * 2**20


def decode_stage(options: DecodeOptions, scorer: Scorer, manifest_schema: pa.Schema, batch_size: int) -> StageSpec:
    """Stateless CPU tasks, one CPU each, never fused into the scoring actors."""
    return StageSpec("decode", DecodeStage, dict(options=options, scorer=scorer, manifest_schema=manifest_schema),
                     needs=(ID, URI, *scorer.inputs()), adds=ADDS, batch_size=batch_size,
                     resources=Resources(cpus=1, memory=DECODE_MEMORY))


class _RowFailed(Exception):
    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status


def _media_type(row: dict) -> str:
    given = row.get(MEDIA_TYPE)
    if given:
        kind = str(given).strip().lower()
        if kind not in MEDIA_TYPES:
            raise _RowFailed(Status.INVALID, f"media_type {given!r} is not one of {', '.join(MEDIA_TYPES)}")
        return kind
    kind = media.infer_media_type(row[URI])
    if kind is None:
        shown = storage.redact(row[URI])
        raise _RowFailed(Status.INVALID, f"cannot tell image from video by the extension of {shown!r}; set media_type")
    return kind


class DecodeStage(Stage):
    """Passed to ``map_batches`` as an instance, so Ray runs it as stateless CPU tasks."""

    def __init__(self, options: DecodeOptions, scorer: Scorer, manifest_schema: pa.Schema):
        self.options = options
        self.scorer = scorer
        self.schema = decoded_schema(manifest_schema, scorer.fields())  # output columns + pixels
        self.manifest_schema = manifest_schema

    def prepare(self, batch: pa.Table) -> pa.Table:
        # Readers type each block on its own (a JSON block of integer ids, a null-only column):
        # every block gets the manifest schema the driver validated.
        return conform_manifest(batch, self.manifest_schema)

    def _decode(self, row: dict, values: dict) -> None:
        """Fill ``values`` with the row's decoded media; raise :class:`_RowFailed` on the way."""
        if not row.get(URI):
            raise _RowFailed(Status.INVALID, "uri is empty")
        refused = self.scorer.refuse(row)
        if refused:
            raise _RowFailed(Status.INVALID, refused)
        kind = values[MEDIA_TYPE] = _media_type(row)
        uri = storage.resolve(row[URI], self.options.base_dir)
        try:
            data, values[FETCH_RETRIES] = storage.read_bytes(uri, self.options.max_bytes, self.options.storage)
        except storage.StorageError as e:
            values[FETCH_RETRIES] = e.retries
            raise _RowFailed(Status.FETCH, str(e)) from e
        try:
            if kind == "image":
                pixels = media.decode_image(data, self.options.image)
            else:
                clip = media.decode_video(data, self.options.video)
                pixels = clip.frames
                values.update(num_frames=pixels.shape[0], source_fps=clip.source_fps,
                              source_frames=clip.source_frames, sample_fps=clip.sample_fps)
        except media.MediaError as e:
            raise _RowFailed(Status.DECODE, str(e)) from e
        values.update({
            "media_height": pixels.shape[-3],
            "media_width": pixels.shape[-2],
            MEDIA_DIGEST: media.pixel_digest(pixels),  # hashed once, here: the engine reuses it
            PIXELS: pixels.tobytes(),
            PIXELS_SHAPE: list(pixels.shape),
        })

    def process(self, batch: pa.Table) -> pa.Table:
        new: dict[str, list] = {name: [] for name in ADDS}
        for row in batch.to_pylist():
            values = {STATUS: Status.OK, ERROR: None, MEDIA_TYPE: row.get(MEDIA_TYPE)}
            try:
                self._decode(row, values)
            except _RowFailed as e:
                values.update(status=e.status, error=str(e))
            except Exception as e:  # noqa: BLE001 - one bad record must never fail the batch
                values.update(status=Status.DECODE, error=f"{type(e).__name__}: {e}")
            if values[STATUS] != Status.OK:
                values.update({PIXELS: None, PIXELS_SHAPE: None})
            for name in ADDS:
                new[name].append(values.get(name))
        columns = {name: pa.array(values, type=self.schema.field(name).type) for name, values in new.items()}
        return conform(with_columns(batch, columns), self.schema)


def pixels_of(buffer: bytes, shape: list[int]) -> np.ndarray:
    """The decoded pixels of one row, as the decode stage packed them (a writable copy)."""
    return np.frombuffer(buffer, dtype=np.uint8).reshape(shape).copy()
