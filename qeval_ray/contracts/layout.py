"""The output directory: the only place that knows its paths and holds its filesystem.

Layout of an output directory::

    OUTPUT/scores/*.parquet   one row per manifest row (contracts.schema.output_schema)
    OUTPUT/summary.json       rows in/out, statuses, throughput, options, provenance
    OUTPUT/report/            the correlation report, when the manifest carries labels
    OUTPUT/_qeval_run.json    what the scores depend on: scoring options and the manifest's ids
    OUTPUT/_checkpoint/       Ray Data's checkpoint: the ids whose rows are written

``summary.json`` is the completion marker: a run removes it when it starts and writes it only
after checking the written scores, so scores without it are an unfinished run, never results.

Resume: a rerun of the same command into the same output continues where the last run stopped
(``stages.write`` says how). ``_qeval_run.json`` guards it: a rerun whose scoring options or
manifest differ is refused unless the user asks to start over.
"""

from __future__ import annotations

import enum
import json
import posixpath

from qeval_ray import storage


class OutputError(OSError):
    """The output location cannot be written."""


class RunState(enum.Enum):
    """What a run does with what its output already holds."""

    FRESH = "fresh"  # nothing there: score everything
    RESUME = "resume"  # an unfinished run with the same fingerprint: score what is missing
    COMPLETE = "complete"  # a finished run with the same fingerprint: nothing to do


class RunMismatch(ValueError):
    """The output holds scores this run must not mix with; the message says what differs."""

    def __init__(self, uri: str, before: dict, now: dict):
        shown = storage.redact(uri)
        if not before:
            message = f"{shown} already holds scores not written by a qeval-ray run"
        else:
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            details = "; ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:6])
            message = f"{shown} holds scores made differently ({details})"
        super().__init__(f"{message}. Pass --start-over to replace them, or choose another --output.")


class OutputLayout:
    SCORES = "scores"
    SUMMARY = "summary.json"
    REPORT = "report"
    RUN_RECORD = "_qeval_run.json"
    CHECKPOINT = "_checkpoint"

    def __init__(self, uri: str, options: storage.StorageOptions = storage.DEFAULT):
        self.uri = uri.rstrip("/")
        self.storage = options
        self.fs, self.root = storage.filesystem(self.uri, options)
        self.scores = self.child(self.SCORES)
        self.summary = self.child(self.SUMMARY)
        self.report = self.child(self.REPORT)
        self.run_record = self.child(self.RUN_RECORD)
        self.checkpoint = self.child(self.CHECKPOINT)

    def child(self, name: str) -> str:
        """The uri of ``name`` inside the output (what users and Ray are shown)."""
        return storage.join(self.uri, name)

    def _path(self, name: str) -> str:
        """The path of ``name`` inside ``self.fs``."""
        return posixpath.join(self.root, name)

    @classmethod
    def scores_of(cls, uri: str, options: storage.StorageOptions = storage.DEFAULT) -> str:
        """A score directory given as the job's output (with scores/) or as the scores themselves."""
        layout = cls(uri, options)
        return layout.scores if layout.fs.exists(layout._path(cls.SCORES)) else layout.uri

    def is_unfinished(self) -> bool:
        """Scores without a summary: a run that did not finish."""
        return self.fs.exists(self._path(self.SCORES)) and not self.fs.exists(self._path(self.SUMMARY))

    def completed_by(self, settings: dict) -> bool:
        """Whether a finished run with the same settings already wrote this output (checked before
        anything is started: a rerun over a finished output costs seconds)."""
        previous = self._read_json(self.RUN_RECORD)
        if previous is None or previous.get("requested") != settings:
            return False
        return self.fs.exists(self._path(self.SUMMARY))

    def begin(self, fingerprint: dict, start_over: bool = False, settings: dict | None = None) -> RunState:
        """Decide what this run does with what the output already holds, before any work.

        Raises :class:`RunMismatch` when the output holds scores made differently, unless
        ``start_over``, which deletes them first.
        """
        fs = self.fs
        previous = self._read_json(self.RUN_RECORD)
        has_scores = fs.exists(self._path(self.SCORES))
        if start_over:
            for name in (self.SCORES, self.CHECKPOINT, self.REPORT, self.SUMMARY, self.RUN_RECORD):
                if fs.exists(self._path(name)):
                    fs.rm(self._path(name), recursive=True)
            previous, has_scores = None, False
        elif previous is not None and previous.get("fingerprint") != fingerprint:
            raise RunMismatch(self.uri, previous.get("fingerprint", {}), fingerprint)
        elif previous is None and has_scores:
            raise RunMismatch(self.uri, {}, fingerprint)
        summary = self._path(self.SUMMARY)
        if previous is not None and fs.exists(summary):
            return RunState.COMPLETE
        if fs.exists(summary):  # a stray marker with no run record: withdraw it before writing
            fs.rm(summary)
        with fs.open(self._path(self.RUN_RECORD), "w") as f:
            json.dump({"fingerprint": fingerprint, "requested": settings}, f, indent=2, sort_keys=True)
        self._remove_partial_files()
        return RunState.RESUME if previous is not None else RunState.FRESH

    def _read_json(self, name: str) -> dict | None:
        path = self._path(name)
        return json.loads(self.fs.cat_file(path)) if self.fs.exists(path) else None

    def _remove_partial_files(self) -> None:
        """Hidden temporaries of local writes a killed run left behind (no reader sees them)."""
        scores = self._path(self.SCORES)
        if storage.is_local(self.uri) and self.fs.exists(scores):
            for name in self.fs.ls(scores, detail=False):
                if posixpath.basename(name).startswith(".") and name.endswith(".tmp"):
                    self.fs.rm(name)

    def score_files(self) -> dict[str, int]:
        """Data files now in scores/, with their row counts (from the parquet footers)."""
        import pyarrow.parquet as pq

        scores = self._path(self.SCORES)
        if not self.fs.exists(scores):
            return {}
        files = [p for p in self.fs.ls(scores, detail=False) if p.endswith(".parquet")
                 and not posixpath.basename(p).startswith((".", "_"))]
        counts = {}
        for name in files:
            with self.fs.open(name, "rb") as f:
                counts[name] = pq.ParquetFile(f).metadata.num_rows
        return counts

    def scores_dataset(self):
        """The written scores as a pyarrow dataset (read column by column, batch by batch)."""
        import pyarrow.dataset as pads

        fs, path = storage.arrow_filesystem(self.scores, self.storage)
        return pads.dataset(path, filesystem=fs, format="parquet")

    def write_summary(self, text: str) -> None:
        """Write the completion marker: the very last thing a run does."""
        with self.fs.open(self._path(self.SUMMARY), "w") as f:
            f.write(text)

    def read_summary(self) -> dict | None:
        """The finished run's summary, or None."""
        return self._read_json(self.SUMMARY)

    def check_writable(self) -> None:
        """Write and delete a probe object, so a run that could never save its results stops now."""
        probe = self._path("_qeval_write_probe")
        try:
            self.fs.makedirs(self.root, exist_ok=True)
            with self.fs.open(probe, "wb") as f:
                f.write(b"ok")
            self.fs.rm(probe)
        except Exception as e:  # noqa: BLE001 - any failure here means the results could not be saved
            raise OutputError(f"cannot write to the output {storage.redact(self.uri)}: {type(e).__name__}: {e}") from e
