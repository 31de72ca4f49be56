"""The run summary: read the written scores back, check rows in = rows out, count what happened.

After writing, only the id/status/error/media_type columns are read back, batch by batch, and the
output must hold every manifest id exactly once: rows in = rows out is verified, not assumed.
``_summary.json`` (the completion marker, ``contracts.layout``) is this summary.
"""

from __future__ import annotations

import json
import resource
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import pyarrow.compute as pc

from qeval_ray import storage
from qeval_ray.contracts.layout import OutputLayout
from qeval_ray.contracts.schema import ERROR, FETCH_RETRIES, ID, MEDIA_TYPE, STATUS, Status
from qeval_ray.scorers.qeval import ALIGNMENT_METHOD, AlignmentMethod
from qeval_ray.stages.base import RowAccountingError

_ERROR_EXAMPLES = 3  # distinct error messages kept per status


@dataclass
class RunSummary:
    input: str
    output: str
    rows_in: int
    rows_out: int
    ok: int
    rows_this_run: int  # rows scored and written by this run (the rest by earlier, interrupted runs)
    fetch_retries: int
    scoring_actor_crashes: int  # batches whose scoring actor died mid-batch (Ray restarted it)
    alignment_in_parts: int  # rows whose alignment was scored from V2S parts (--v2s)
    driver_peak_mb: float  # the driver process's peak memory: it holds no rows, so it stays flat
    by_status: dict[str, int]
    by_media_type: dict[str, int]
    error_examples: dict[str, list[str]]
    elapsed_s: float  # wall time, start-up included
    items_per_s: float  # rows scored by this run over the wall time
    scoring_s: float | None  # from the first scoring actor ready to the last batch scored
    items_per_s_scoring: float | None  # rows scored by this run over the scoring time
    provenance: dict[str, str]
    options: dict = field(default_factory=dict)
    report: str | None = None  # the report's Markdown, when the manifest carried labels
    no_report: str | None = None  # why the labels gave no report (e.g. every one missing)
    note: str | None = None  # e.g. that the output was already complete

    @classmethod
    def of_finished_run(cls, layout: OutputLayout, note: str | None = None) -> "RunSummary":
        """The finished run's summary (fields a different version did not write are None)."""
        import dataclasses

        data = layout.read_summary() or {}
        known = {f.name: data.get(f.name) for f in dataclasses.fields(cls)
                 if f.name in data or f.default is dataclasses.MISSING}
        return cls(**{**known, "note": note})

    def _throughput(self) -> str:
        wall = f"{self.items_per_s:.2f} items/s over {self.elapsed_s:.1f} s of wall time (start-up included)"
        if not self.scoring_s:
            return wall
        return f"{self.items_per_s_scoring:.2f} items/s over {self.scoring_s:.1f} s of scoring, {wall}"

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if k != "note"}, indent=2, sort_keys=True)

    def format(self) -> str:
        errors = {s: n for s, n in self.by_status.items() if s != Status.OK}
        resumed = f" ({self.rows_this_run} scored by this run)" if self.rows_this_run != self.rows_out else ""
        lines = [
            f"qeval-ray: {self.rows_in} rows in, {self.rows_out} rows out{resumed}, {self.ok} ok"
            + (f", errors: {', '.join(f'{s} {n}' for s, n in sorted(errors.items()))}" if errors else ", no errors"),
            f"  {self._throughput()}; media: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.by_media_type.items()))
            + f"; storage retries: {self.fetch_retries}"
            + (f"; batches retried after their scoring actor died: {self.scoring_actor_crashes}" if self.scoring_actor_crashes else ""),
        ]
        if self.options.get("v2s"):
            lines.append(f"  alignment: {self.alignment_in_parts} long prompt(s) scored in V2S parts")
        for status, examples in sorted(self.error_examples.items()):
            for example in examples:
                lines.append(f"  {status}: {example}")
        lines.append(f"  scores:  {storage.join(self.output, OutputLayout.SCORES)}/")
        lines.append(f"  summary: {storage.join(self.output, OutputLayout.SUMMARY)}")
        lines.append(f"  report:  {self.report}" if self.report
                     else f"  report:  none ({self.no_report or 'the manifest has no quality_mos / alignment_mos labels'})")
        if self.note:
            lines.insert(0, f"qeval-ray: {self.note}")
        return "\n".join(lines)


def _scan(layout: OutputLayout):
    dataset = layout.scores_dataset()
    columns = [ID, STATUS, ERROR, MEDIA_TYPE, FETCH_RETRIES]
    if ALIGNMENT_METHOD in dataset.schema.names:  # absent from outputs made before V2S
        columns.append(ALIGNMENT_METHOD)
    return dataset.to_batches(columns=columns, batch_size=65536)


def summarize(layout: OutputLayout, manifest, config, provenance, started: float, rows_this_run: int,
              scoring_actor_crashes: int = 0, scoring_s: float | None = None) -> RunSummary:
    by_status: Counter = Counter()
    by_media: Counter = Counter()
    examples: dict[str, list[str]] = {}
    ids, retries, in_parts = [], 0, 0
    for batch in _scan(layout):
        ids.append(batch.column(ID))
        retries += pc.sum(batch.column(FETCH_RETRIES)).as_py() or 0
        by_status.update(batch.column(STATUS).to_pylist())
        by_media.update(m or "unknown" for m in batch.column(MEDIA_TYPE).to_pylist())
        if ALIGNMENT_METHOD in batch.schema.names:
            in_parts += pc.sum(pc.equal(batch.column(ALIGNMENT_METHOD), AlignmentMethod.PARTS)).as_py() or 0
        failed = batch.filter(pc.not_equal(batch.column(STATUS), Status.OK))
        for status, error in zip(failed.column(STATUS).to_pylist(), failed.column(ERROR).to_pylist()):
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
        ok=by_status.get(Status.OK, 0),
        rows_this_run=rows_this_run,
        fetch_retries=retries,
        scoring_actor_crashes=scoring_actor_crashes,
        alignment_in_parts=in_parts,
        driver_peak_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        by_status=dict(by_status),
        by_media_type=dict(by_media),
        error_examples=examples,
        elapsed_s=round(elapsed, 3),
        items_per_s=round(rows_this_run / elapsed, 3) if elapsed > 0 else 0.0,
        scoring_s=round(scoring_s, 3) if scoring_s else None,
        items_per_s_scoring=round(rows_this_run / scoring_s, 3) if scoring_s else None,
        provenance=provenance.as_dict(),
        options=_shown_options(config),
    )
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
