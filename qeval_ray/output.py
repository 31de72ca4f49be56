"""The write stage and the run summary.

Layout of an output directory::

    OUTPUT/scores/*.parquet   one row per manifest row (schema.output_schema)
    OUTPUT/summary.json       rows in/out, statuses, throughput, options, provenance

``summary.json`` is the completion marker: a run removes it when it starts and writes it only
after checking the written scores, so scores without it are an unfinished run, never results.
Each parquet file appears whole (see ``storage.arrow_filesystem(atomic_writes=True)``).

After writing, the summary reads back only the id/status/error/media_type columns and checks that
the output holds every manifest id exactly once: rows in = rows out is verified, not assumed.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import pyarrow.compute as pc

from qeval_ray import storage
from qeval_ray.stage import RowAccountingError

_ERROR_EXAMPLES = 3  # distinct error messages kept per status


class OutputError(OSError):
    """The output location cannot be written."""


class OutputLayout:
    def __init__(self, uri: str, options: storage.StorageOptions = storage.DEFAULT):
        self.uri = uri.rstrip("/")
        self.storage = options
        self.scores = storage.join(self.uri, "scores")
        self.summary = storage.join(self.uri, "summary.json")
        self.report = storage.join(self.uri, "report")

    def begin(self) -> None:
        """Before a run writes anything: stop now if the output is unwritable, and withdraw the
        previous run's completion marker."""
        self.check_writable()
        fs, path = storage.filesystem(self.summary, self.storage)
        if fs.exists(path):
            fs.rm(path)

    def check_writable(self) -> None:
        """Write and delete a probe object, so a run that could never save its results stops now."""
        probe = storage.join(self.uri, "_qeval_write_probe")
        try:
            fs, path = storage.filesystem(probe, self.storage)
            fs.makedirs(storage.filesystem(self.uri, self.storage)[1], exist_ok=True)
            with fs.open(path, "wb") as f:
                f.write(b"ok")
            fs.rm(path)
        except Exception as e:  # noqa: BLE001 - any failure here means the results could not be saved
            shown = storage.redact(self.uri)
            raise OutputError(f"cannot write to the output {shown}: {type(e).__name__}: {e}") from e


def write_scores(ds, layout: OutputLayout) -> None:
    """Run the dataset into parquet; a rerun replaces the previous scores, never appends to them."""
    from ray.data import SaveMode

    fs, path = storage.arrow_filesystem(layout.scores, layout.storage, atomic_writes=True)
    ds.write_parquet(path, filesystem=fs, mode=SaveMode.OVERWRITE)


@dataclass
class RunSummary:
    input: str
    output: str
    rows_in: int
    rows_out: int
    ok: int
    fetch_retries: int
    by_status: dict[str, int]
    by_media_type: dict[str, int]
    error_examples: dict[str, list[str]]
    elapsed_s: float
    items_per_s: float
    provenance: dict[str, str]
    options: dict = field(default_factory=dict)
    report: str | None = None  # the report's Markdown, when the manifest carried labels

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def format(self) -> str:
        errors = {s: n for s, n in self.by_status.items() if s != "ok"}
        lines = [
            f"qeval-ray: {self.rows_in} rows in, {self.rows_out} rows out, {self.ok} ok"
            + (f", errors: {', '.join(f'{s} {n}' for s, n in sorted(errors.items()))}" if errors else ", no errors"),
            f"  {self.elapsed_s:.1f} s, {self.items_per_s:.2f} items/s; media: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.by_media_type.items()))
            + f"; storage retries: {self.fetch_retries}",
        ]
        for status, examples in sorted(self.error_examples.items()):
            for example in examples:
                lines.append(f"  {status}: {example}")
        lines.append(f"  scores:  {self.output}/scores/")
        lines.append(f"  summary: {self.output}/summary.json")
        lines.append(f"  report:  {self.report}" if self.report
                     else "  report:  none (the manifest has no quality_mos / alignment_mos labels)")
        return "\n".join(lines)


def _scan(layout: OutputLayout):
    import pyarrow.dataset as pads

    fs, path = storage.arrow_filesystem(layout.scores, layout.storage)
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    return dataset.to_batches(columns=["id", "status", "error", "media_type", "fetch_retries"], batch_size=65536)


def summarize(layout: OutputLayout, manifest, config, provenance, started: float) -> RunSummary:
    by_status: Counter = Counter()
    by_media: Counter = Counter()
    examples: dict[str, list[str]] = {}
    ids, retries = [], 0
    for batch in _scan(layout):
        ids.append(batch.column("id"))
        retries += pc.sum(batch.column("fetch_retries")).as_py() or 0
        by_status.update(batch.column("status").to_pylist())
        by_media.update(m or "unknown" for m in batch.column("media_type").to_pylist())
        failed = batch.filter(pc.not_equal(batch.column("status"), "ok"))
        for status, error in zip(failed.column("status").to_pylist(), failed.column("error").to_pylist()):
            kept = examples.setdefault(status, [])
            if len(kept) < _ERROR_EXAMPLES and error not in kept:
                kept.append(error)
    rows_out = sum(len(c) for c in ids)
    if rows_out != manifest.num_rows:
        raise RowAccountingError(f"the manifest has {manifest.num_rows} rows but {rows_out} were written")
    if ids:
        import pyarrow as pa

        counts = pc.value_counts(pa.chunked_array(ids))
        if len(counts.filter(pc.greater(counts.field("counts"), 1))):
            raise RowAccountingError("an id was written more than once")
    elapsed = time.time() - started
    summary = RunSummary(
        input=manifest.uri,
        output=layout.uri,
        rows_in=manifest.num_rows,
        rows_out=rows_out,
        ok=by_status.get("ok", 0),
        fetch_retries=retries,
        by_status=dict(by_status),
        by_media_type=dict(by_media),
        error_examples=examples,
        elapsed_s=round(elapsed, 3),
        items_per_s=round(rows_out / elapsed, 3) if elapsed > 0 else 0.0,
        provenance=provenance.as_dict(),
        options=_shown_options(config),
    )
    fs, path = storage.filesystem(layout.summary, layout.storage)
    with fs.open(path, "w") as f:
        f.write(summary.to_json())
    return summary


def _shown_options(config) -> dict:
    """The run's options as the summary records them: tuples as lists, uris without credentials."""
    shown = {}
    for key, value in asdict(config).items():
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, str):
            value = storage.redact(value)
        shown[key] = value
    return shown
