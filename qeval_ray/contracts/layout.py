"""The output directory, and the run's own bookkeeping beside it: the only place that knows their
paths and holds their filesystem.

    OUTPUT/scores/scores-*.parquet   one row per manifest row (contracts.schema.output_schema)
    OUTPUT/_summary.json             rows in/out, statuses, throughput, options, provenance
    OUTPUT/_report/                  the correlation report, when the manifest carries labels

    STATE/run.json                   what the scores depend on: scoring options and the manifest's ids
    STATE/checkpoint/                Ray Data's checkpoint: the ids whose rows are written

OUTPUT holds the scores and nothing a reader of parquet trips over: pyarrow, pandas, polars and
duckdb pointed at it (``OUTPUT`` or ``OUTPUT/**/*.parquet``) read exactly the scores. Names that
start with ``_`` are skipped by directory readers (as Spark's ``_SUCCESS``), and the run's
bookkeeping, whose checkpoint files are parquet too, lives in STATE: by default a hidden sibling,
``.NAME.qeval`` beside OUTPUT (``--state-dir`` to put it elsewhere).

``_summary.json`` is the completion marker: a run removes it when it starts and writes it only
after checking the written scores, so scores without it are an unfinished run, never results.
A rerun of the same command continues where the last run stopped (``stages.write`` says how);
``run.json`` guards it: a rerun whose scoring options or manifest differ is refused unless the
user asks to start over.
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


def default_state_dir(output_uri: str) -> str:
    """``.NAME.qeval`` beside the output ``PARENT/NAME``."""
    uri = output_uri.rstrip("/")
    parent, _, name = uri.rpartition("/")
    if "/" not in uri:  # a relative local name
        parent, name = ".", uri
    if not name or parent.endswith(":/"):  # a bucket's root: nothing beside it but other buckets
        raise OutputError(f"--output {storage.redact(output_uri)} has no parent to keep the run's bookkeeping "
                          "beside it: give --state-dir")
    return f"{parent}/.{name}.qeval"


class OutputLayout:
    SCORES = "scores"
    SUMMARY = "_summary.json"
    REPORT = "_report"
    RUN_RECORD = "run.json"  # in the state directory
    CHECKPOINT = "checkpoint"  # in the state directory
    # What outputs of earlier versions held inside OUTPUT (removed with --start-over).
    _LEGACY = ("summary.json", "report", "_qeval_run.json", "_checkpoint")

    def __init__(self, uri: str, options: storage.StorageOptions = storage.DEFAULT, state_uri: str | None = None):
        self.uri = uri.rstrip("/")
        self.storage = options
        self.fs, self.root = storage.filesystem(self.uri, options)
        self.scores = self.child(self.SCORES)
        self.summary = self.child(self.SUMMARY)
        self.report = self.child(self.REPORT)
        self._state_uri = state_uri.rstrip("/") if state_uri else None

    @property
    def state(self) -> str:
        """The run's bookkeeping (resolved on first use: a report never needs it)."""
        if self._state_uri is None:
            self._state_uri = default_state_dir(self.uri)
        return self._state_uri

    @property
    def checkpoint(self) -> str:
        return storage.join(self.state, self.CHECKPOINT)

    @property
    def run_record(self) -> str:
        return storage.join(self.state, self.RUN_RECORD)

    def child(self, name: str) -> str:
        """The uri of ``name`` inside the output (what users and Ray are shown)."""
        return storage.join(self.uri, name)

    def _path(self, name: str) -> str:
        """The path of ``name`` inside the output, in ``self.fs``."""
        return posixpath.join(self.root, name)

    def _state_path(self, name: str = "") -> tuple:
        fs, path = storage.filesystem(self.state, self.storage)
        return fs, posixpath.join(path, name) if name else path

    @classmethod
    def scores_of(cls, uri: str, options: storage.StorageOptions = storage.DEFAULT) -> str:
        """A score directory given as the job's output (with scores/) or as the scores themselves."""
        layout = cls(uri, options)
        return layout.scores if layout.fs.exists(layout._path(cls.SCORES)) else layout.uri

    def is_unfinished(self) -> bool:
        """Scores without a summary: a run that did not finish."""
        return self.fs.exists(self._path(self.SCORES)) and not self.fs.exists(self._path(self.SUMMARY))

    def check_resumable(self, settings: dict, start_over: bool) -> RunState | None:
        """What the output's own records decide before anything is started: COMPLETE (a finished
        run with the same settings), a :class:`RunMismatch` (scores made with other settings), or
        None (the run goes on; :meth:`begin` decides the rest once the provenance is resolved)."""
        if start_over:
            return None
        previous = self._read_state_json(self.RUN_RECORD)
        if previous is not None and previous.get("requested") != settings:
            raise RunMismatch(self.uri, previous.get("requested") or {}, settings)
        if previous is None and self.fs.exists(self._path(self.SCORES)):
            raise RunMismatch(self.uri, {}, settings)
        if previous is not None and self.fs.exists(self._path(self.SUMMARY)):
            return RunState.COMPLETE
        return None

    def begin(self, fingerprint: dict, start_over: bool = False, settings: dict | None = None) -> RunState:
        """Decide what this run does with what the output already holds, before any work.

        Raises :class:`RunMismatch` when the output holds scores made differently, unless
        ``start_over``, which deletes them (and the run's bookkeeping) first.
        """
        fs = self.fs
        previous = self._read_state_json(self.RUN_RECORD)
        has_scores = fs.exists(self._path(self.SCORES))
        if start_over:
            for name in (self.SCORES, self.REPORT, self.SUMMARY, *self._LEGACY):
                if fs.exists(self._path(name)):
                    fs.rm(self._path(name), recursive=True)
            state_fs, state = self._state_path()
            if state_fs.exists(state):
                state_fs.rm(state, recursive=True)
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
        state_fs, record = self._state_path(self.RUN_RECORD)
        state_fs.makedirs(posixpath.dirname(record), exist_ok=True)
        with state_fs.open(record, "w") as f:
            json.dump({"fingerprint": fingerprint, "requested": settings}, f, indent=2, sort_keys=True)
        self._remove_partial_files()
        return RunState.RESUME if previous is not None else RunState.FRESH

    def _read_json(self, name: str) -> dict | None:
        path = self._path(name)
        return json.loads(self.fs.cat_file(path)) if self.fs.exists(path) else None

    def _read_state_json(self, name: str) -> dict | None:
        fs, path = self._state_path(name)
        return json.loads(fs.cat_file(path)) if fs.exists(path) else None

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
        """Write and delete a probe object in the output and in the state directory, so a run that
        could never save its results stops now."""
        for fs, root in ((self.fs, self.root), self._state_path()):
            probe = posixpath.join(root, "_qeval_write_probe")
            try:
                fs.makedirs(root, exist_ok=True)
                with fs.open(probe, "wb") as f:
                    f.write(b"ok")
                fs.rm(probe)
            except Exception as e:  # noqa: BLE001 - any failure here means the results could not be saved
                what = "the output" if root == self.root else "the run's state directory"
                shown = storage.redact(self.uri if root == self.root else self.state)
                raise OutputError(f"cannot write to {what} {shown}: {storage.describe_error(e, self.uri)}") from e
