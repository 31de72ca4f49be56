"""Correlation reports: how well the scores agree with human MOS, for people and machines.

From a score directory (and optionally a labels file joined on ``id``) this writes::

    REPORT/report.json   every figure, with sample counts, intervals, options and provenance
    REPORT/report.md     the headline table (the Q-Eval-100K paper's layout), then the details
    REPORT/*.png         score vs MOS scatter per aspect and media (with the fitted curve), and a
                         generator leaderboard per aspect

Figures, as the paper reports them: instance level (every item) and model level (per-generator
means, correlated across generators); per media type and pooled; all prompts and the long-prompt
subset (more than 25 words). Rows whose status is not ``ok`` or that lack a score or a label are
excluded and counted. Only the needed columns are read; prompts become a long/short flag as they
stream past, so a report over millions of rows holds a few numeric arrays.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from qeval_ray import storage
from qeval_ray.contracts.layout import OutputLayout
from qeval_ray.contracts.schema import LABEL_COLUMNS, MEDIA_TYPE, MEDIA_TYPES, PROMPT, STATUS, Status
from qeval_ray.report import plots as draw
from qeval_ray.report.metrics import MIN_PAIRS, agreement, correlation
from qeval_ray.options import did_you_mean
from qeval_ray.report.options import ReportOptions
from qeval_ray.scorers.qeval import ASPECTS

LEVELS = ("instance", "model")
SUBSETS = ("all", "long_prompt")
REPORT_JSON, REPORT_MARKDOWN = "report.json", "report.md"
_PLOT_POINTS = 20_000  # scatter plots show at most this many points (a seeded sample)


class ReportError(ValueError):
    """No report can be made; the message says why (e.g. no labels)."""


@dataclass
class Categorical:
    """A string column as small integer codes (-1 for null): a million rows cost 4 MB, not 60."""

    codes: np.ndarray
    categories: list[str]

    @classmethod
    def of(cls, column: pa.ChunkedArray) -> "Categorical":
        encoded = pc.dictionary_encode(column.cast(pa.string())).combine_chunks()
        return cls(encoded.indices.fill_null(-1).to_numpy().astype(np.int32), encoded.dictionary.to_pylist())

    def eq(self, value: str) -> np.ndarray:
        return self.codes == self.categories.index(value) if value in self.categories else np.zeros_like(self.codes, bool)


@dataclass
class ReportData:
    """The columns a report needs, as numpy arrays (one entry per score row)."""

    status: Categorical
    media_type: Categorical
    group: Categorical  # the --by column (load refuses scores without it)
    long_prompt: np.ndarray
    scores: dict[str, np.ndarray]  # aspect -> float (NaN where missing)
    labels: dict[str, np.ndarray]  # aspect -> float (NaN where missing)

    @property
    def rows(self) -> int:
        return len(self.long_prompt)


# --- loading --------------------------------------------------------------------------------


def _dataset(uri: str, options: storage.StorageOptions):
    import pyarrow.dataset as pads

    fs, path = storage.arrow_filesystem(uri, options)
    fmt = {"csv": "csv", "jsonl": "json", "json": "json"}.get(uri.rsplit(".", 1)[-1].lower(), "parquet")
    return pads.dataset(path, filesystem=fs, format=fmt)


def load(scores_uri: str, options: ReportOptions, storage_options: storage.StorageOptions) -> ReportData:
    dataset = _dataset(OutputLayout.scores_of(scores_uri, storage_options), storage_options)
    names = set(dataset.schema.names)
    check_group_column(dataset.schema, options.group_by)
    labels_table = None
    if options.labels:  # read as a manifest's labels are: the same formats, the same missing-label rule
        from qeval_ray.stages.read import ManifestError, read_labels

        try:
            labels_table = read_labels(options.labels, storage_options, f"--labels {storage.redact(options.labels)}")
        except ManifestError as e:
            raise ReportError(str(e)) from None
    wanted = [STATUS, MEDIA_TYPE, PROMPT, *ASPECTS, *LABEL_COLUMNS.values(), options.group_by]
    columns = [c for c in dict.fromkeys(wanted) if c in names] + (["id"] if labels_table is not None else [])
    parts = []
    # Little readahead: the prompt column is the bulk of what is read, and is dropped batch by batch.
    for batch in dataset.to_batches(columns=columns, batch_size=65_536, batch_readahead=2, fragment_readahead=1):
        table = pa.Table.from_batches([batch])
        words = pc.list_value_length(pc.utf8_split_whitespace(table.column(PROMPT).fill_null("")))
        table = table.drop_columns([PROMPT]).append_column("long_prompt", pc.greater(words, options.long_prompt_words))
        parts.append(table)
    table = pa.concat_tables(parts) if parts else dataset.schema.empty_table()
    if labels_table is not None:
        table = _join_labels(table, labels_table)

    def floats(name):
        if name not in table.column_names:
            return np.full(table.num_rows, np.nan)
        return table.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False).astype(float)

    def strings(name):
        return Categorical.of(table.column(name)) if name in table.column_names else None

    return ReportData(
        status=strings(STATUS),
        media_type=strings(MEDIA_TYPE),
        group=strings(options.group_by),
        long_prompt=table.column("long_prompt").to_numpy(zero_copy_only=False).astype(bool),
        scores={a: floats(a) for a in ASPECTS},
        labels={a: floats(col) for a, col in LABEL_COLUMNS.items()},
    )


def check_group_column(schema: pa.Schema, group_by: str) -> None:
    """Refuse a ``--by`` column the scores do not have, before anything is read."""
    if group_by in schema.names:
        return
    usable = [f.name for f in schema if f.name != PROMPT and (
        pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or pa.types.is_integer(f.type)
        or pa.types.is_boolean(f.type) or pa.types.is_dictionary(f.type))]
    raise ReportError(f"--by {group_by!r}: the scores have no such column{did_you_mean(group_by, schema.names)}; "
                      f"columns to group by: {', '.join(usable) or 'none'}")


def _join_labels(table: pa.Table, labels: pa.Table) -> pa.Table:
    """Labels from the file fill in where the scores have none (a score row's own label wins)."""
    renamed = labels.rename_columns(["id"] + [f"{c}__file" for c in labels.column_names[1:]])
    joined = table.join(renamed, "id", join_type="left outer")
    for name in labels.column_names[1:]:
        incoming = joined.column(f"{name}__file").cast(pa.float64())
        merged = pc.coalesce(joined.column(name).cast(pa.float64()), incoming) if name in joined.column_names else incoming
        joined = joined.drop_columns([f"{name}__file"] + ([name] if name in joined.column_names else []))
        joined = joined.append_column(name, merged)
    return joined.drop_columns(["id"])


# --- figures --------------------------------------------------------------------------------


def has_labels(data: ReportData) -> bool:
    return any(np.isfinite(v).any() for v in data.labels.values())


def build(data: ReportData, options: ReportOptions, source: dict | None = None) -> dict:
    if not has_labels(data):
        raise ReportError("no labels: neither quality_mos nor alignment_mos has a value, in the scores "
                          "or in --labels; nothing to report")
    ok = data.status.eq(Status.OK)
    report = {"source": source or {}, "options": _options_dict(options), "rows": {"total": data.rows},
              "excluded": {}, "figures": [], "generators": {}}
    medias = [m for m in MEDIA_TYPES if data.media_type.eq(m).any()]
    for aspect in ASPECTS:
        label, score = data.labels[aspect], data.scores[aspect]
        if not np.isfinite(label).any():
            report["excluded"][aspect] = {"reason": f"no {LABEL_COLUMNS[aspect]} labels"}
            continue
        has_score, has_label = np.isfinite(score), np.isfinite(label)
        usable = ok & has_score & has_label
        report["excluded"][aspect] = {
            "used": int(usable.sum()),
            "status_not_ok": int((~ok).sum()),
            "no_score": int((ok & ~has_score).sum()),
            "no_label": int((ok & has_score & ~has_label).sum()),
        }
        for media in medias + ["all"]:
            in_media = usable if media == "all" else usable & data.media_type.eq(media)
            for subset in SUBSETS:
                rows = in_media & data.long_prompt if subset == "long_prompt" else in_media
                for level in LEVELS:
                    report["figures"].append(_figure(data, aspect, media, subset, level, rows, options))
        report["generators"][aspect] = _leaderboard(data, aspect, usable, options)
    return report


def _figure(data, aspect, media, subset, level, rows, options) -> dict:
    key = {"aspect": aspect, "media": media, "subset": subset, "level": level}
    x, y = data.scores[aspect][rows], data.labels[aspect][rows]
    if level == "model":
        groups = data.group.codes[rows]
        known = groups >= 0
        figure = agreement(x[known], y[known], options.metrics, groups=groups[known])
        out = {**key, **asdict(figure), "items": int(known.sum())}
    else:
        out = {**key, **asdict(agreement(x, y, options.metrics))}
    return out


def _leaderboard(data, aspect, usable, options) -> list[dict]:
    known = usable & (data.group.codes >= 0)
    groups = data.group.codes[known]
    x, y = data.scores[aspect][known], data.labels[aspect][known]
    board = []
    for code in np.unique(groups):
        sel = groups == code
        gx, gy = x[sel], y[sel]
        enough = len(gx) >= MIN_PAIRS and np.ptp(gx) > 0 and np.ptp(gy) > 0
        board.append({"model": data.group.categories[code], "n": int(sel.sum()), "mean_score": float(gx.mean()),
                      "mean_mos": float(gy.mean()),
                      "srcc": correlation("srcc", gx, gy) if enough else None,
                      "plcc": correlation("plcc", gx, gy) if enough else None})
    for key, rank in (("mean_score", "rank_score"), ("mean_mos", "rank_mos")):
        for position, row in enumerate(sorted(board, key=lambda r: -r[key]), start=1):
            row[rank] = position
    return sorted(board, key=lambda r: r["rank_score"])


def _options_dict(options: ReportOptions) -> dict:
    return {"group_by": options.group_by, "long_prompt_words": options.long_prompt_words,
            "labels": storage.redact(options.labels) if options.labels else None, **asdict(options.metrics)}


# --- rendering ------------------------------------------------------------------------------


def _num(value, digits=3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _with_ci(figure: dict, name: str) -> str:
    ci = figure.get("ci", {}).get(name)
    text = _num(figure.get(name))
    return f"{text} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and figure.get(name) is not None else text


def _find(report, **key) -> dict | None:
    return next((f for f in report["figures"] if all(f[k] == v for k, v in key.items())), None)


def headline_plcc(figure: dict) -> tuple[float | None, str | None]:
    """The headline's PLCC: (fitted, None), or (raw, why there is no fitted one); (None, None)
    where the group has no figure at all."""
    if figure.get("plcc_fitted") is not None:
        return figure["plcc_fitted"], None
    if figure.get("plcc") is None:
        return None, None
    failed = (figure.get("logistic") or {}).get("failed")
    return figure["plcc"], failed or "the fitted curve is flat over these scores"


def markdown(report: dict) -> str:
    lines = ["# qeval-ray correlation report", ""]
    source = report.get("source", {})
    if source:
        lines += [f"Scores: `{source.get('scores', '')}`  ", "Scorer: " + ", ".join(
            f"{k} `{v}`" for k, v in source.get("provenance", {}).items()), ""]
    lines += ["## Headline", "",
              "SRCC and PLCC against MOS, all prompts. PLCC after the 4-parameter logistic mapping; where no "
              "curve could be fitted, the raw PLCC, marked *raw*, with the reason below (raw PLCC of every "
              "group in the details). Model level: per-generator means, correlated across generators.", "",
              "| aspect | media | instance SRCC | instance PLCC | model SRCC | model PLCC |",
              "|---|---|---|---|---|---|"]
    notes, raw = [], []
    for aspect in ASPECTS:
        for media in (*MEDIA_TYPES, "all"):
            cells = []
            for level in LEVELS:
                f = _find(report, aspect=aspect, media=media, subset="all", level=level)
                if f is None:
                    cells += ["", ""]
                    continue
                if f.get("reason"):
                    notes.append(f"{aspect} · {media} · {level}: {f['reason']}")
                plcc, why_raw = headline_plcc(f)
                if why_raw:
                    raw.append(f"{aspect} · {media} · {level}: {why_raw}")
                cells += [_num(f.get("srcc")), _num(plcc) + (" *raw*" if why_raw else "")]
            if any(cells):
                lines.append(f"| {aspect} | {media} | " + " | ".join(c or "" for c in cells) + " |")
    if raw:
        lines += ["", "*raw*: PLCC without the logistic mapping, because:", ""] + [f"- {n}" for n in raw]
    if notes:
        lines += ["", "No figure where a group is too small or constant:", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Details", "",
              "| aspect | media | prompts | level | n | SRCC | KRCC | PLCC | PLCC (fitted) | RMSE (fitted) | note |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    no_long = {f["aspect"] for f in report["figures"] if f["subset"] == "long_prompt" and f["level"] == "instance"
               and f["media"] == "all" and f["n"] == 0}
    for f in report["figures"]:
        if f["subset"] == "long_prompt" and f["aspect"] in no_long:
            continue  # said once below instead of a row of dashes per group
        note = f.get("reason") or ((f.get("logistic") or {}).get("failed") or "")
        lines.append(f"| {f['aspect']} | {f['media']} | {f['subset'].replace('_', ' ')} | {f['level']} | {f['n']} | "
                     f"{_with_ci(f, 'srcc')} | {_with_ci(f, 'krcc')} | {_with_ci(f, 'plcc')} | "
                     f"{_num(f.get('plcc_fitted'))} | {_num(f.get('rmse_fitted'))} | {note} |")
    if no_long:
        lines += ["", f"No prompt has more than {report['options']['long_prompt_words']} words: "
                  "the long-prompt subset is empty."]
    methods = sorted({f["ci_method"] for f in report["figures"] if f.get("ci_method")})
    if methods:
        lines += ["", "95% intervals in brackets. " + " ".join(f"{m}." for m in methods)]
    for aspect, board in report["generators"].items():
        lines += ["", f"## Generators by {aspect}", "",
                  "| rank (score) | generator | n | mean score | mean MOS | rank (MOS) | SRCC within |",
                  "|---|---|---|---|---|---|---|"]
        for row in board:
            lines.append(f"| {row['rank_score']} | {row['model']} | {row['n']} | {row['mean_score']:.3f} | "
                         f"{row['mean_mos']:.3f} | {row['rank_mos']} | {_num(row['srcc'])} |")
    lines += ["", "## Rows", "", f"{report['rows']['total']} score rows."]
    for aspect, excluded in report["excluded"].items():
        if "reason" in excluded:
            lines.append(f"- {aspect}: not reported ({excluded['reason']}).")
        else:
            lines.append(f"- {aspect}: {excluded['used']} used; excluded: {excluded['status_not_ok']} not ok, "
                         f"{excluded['no_score']} without a score, {excluded['no_label']} without a label.")
    if report.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]]
    return "\n".join(lines) + "\n"


def plots(data: ReportData, report: dict, options: ReportOptions) -> dict[str, bytes]:
    """PNG files by name: scatter with fitted curve per aspect and media, leaderboard per aspect."""
    images = {}
    rng = np.random.default_rng(options.metrics.seed)
    ok = data.status.eq(Status.OK)
    for aspect in ASPECTS:
        for media in MEDIA_TYPES:
            f = _find(report, aspect=aspect, media=media, subset="all", level="instance")
            if f is None or f.get("reason"):
                continue
            rows = np.flatnonzero(ok & data.media_type.eq(media) & np.isfinite(data.scores[aspect])
                                  & np.isfinite(data.labels[aspect]))
            shown = rng.choice(rows, _PLOT_POINTS, replace=False) if len(rows) > _PLOT_POINTS else rows
            sample = f" ({len(shown)} of {len(rows)} shown)" if len(shown) < len(rows) else ""
            images[f"scatter_{aspect}_{media}.png"] = draw.scatter(
                data.scores[aspect][shown], data.labels[aspect][shown], xlabel=f"{aspect} score",
                ylabel=f"{aspect} MOS", logistic=f.get("logistic"),
                title=f"{aspect} · {media}: SRCC {_num(f['srcc'])}, PLCC {_num(f['plcc'])} raw"
                      f"{'' if f.get('plcc_fitted') is None else ', ' + _num(f['plcc_fitted']) + ' fitted'}{sample}")
    for aspect, board in report["generators"].items():
        if len(board) >= 2:
            images[f"leaderboard_{aspect}.png"] = draw.leaderboard(board, aspect)
    return images


# --- entry point ----------------------------------------------------------------------------


def make_report(scores_uri: str, report_uri: str, options: ReportOptions = ReportOptions(),
                storage_options: storage.StorageOptions = storage.DEFAULT, provenance: dict | None = None) -> dict:
    """Read the scores, compute every figure, write report.json, report.md and the plots.

    An output that cannot be written is found before the scores are read (a probe file), and
    any write that still fails is a :class:`ReportError` naming the cause, never a traceback."""
    scores = _dataset(OutputLayout.scores_of(scores_uri, storage_options), storage_options)
    check_group_column(scores.schema, options.group_by)  # a wrong --by stops before anything is written
    with _writing(report_uri, storage_options):
        fs, root = _open_output(report_uri, storage_options)
    data = load(scores_uri, options, storage_options)
    report = build(data, options, {"scores": storage.redact(scores_uri), "provenance": provenance or {}})
    images = plots(data, report, options) if options.plots else {}
    report["plots"] = sorted(images)
    files = {**images, REPORT_JSON: json.dumps(report, indent=2, allow_nan=False).encode(),
             REPORT_MARKDOWN: markdown(report).encode()}
    with _writing(report_uri, storage_options):
        for name, content in files.items():
            fs.pipe_file(storage.join(root, name), content)
    return report


_PROBE = "_qeval_write_probe"


def _open_output(report_uri: str, storage_options: storage.StorageOptions):
    fs, root = storage.filesystem(report_uri, storage_options)
    if fs.isfile(root):
        raise ReportError(f"error: cannot write the report to {storage.redact(report_uri)}: it is a file, "
                          "not a directory")
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(storage.join(root, _PROBE), b"ok")
    fs.rm(storage.join(root, _PROBE))
    return fs, root


@contextlib.contextmanager
def _writing(report_uri: str, storage_options: storage.StorageOptions):
    try:
        yield
    except ReportError:
        raise
    except Exception as e:  # noqa: BLE001 - storage libraries raise many types: one line says which problem
        raise ReportError(f"error: cannot write the report to {storage.redact(report_uri)}: "
                          f"{storage.describe_error(e, report_uri)}") from e
