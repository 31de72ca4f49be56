"""Correlation reports: figures equal scipy's, the fit recovers a known curve, edge cases say why."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from conftest import REPO
from qeval_ray.report.metrics import agreement, fit_logistic, logistic4
from qeval_ray.report.options import MetricOptions, ReportOptions
from qeval_ray.report.report import ReportError, build, load

FAST = MetricOptions(bootstrap=200, seed=1)


def scores_table(n=60, seed=0, generators=("g1", "g2", "g3", "g4"), media=("image", "video"), **overrides):
    rng = np.random.default_rng(seed)
    q = rng.uniform(0, 1, n)
    a = rng.uniform(0, 1, n)
    cols = {
        "id": [f"r{i}" for i in range(n)],
        "status": ["ok"] * n,
        "media_type": [media[i % len(media)] for i in range(n)],
        "model": [generators[i % len(generators)] for i in range(n)],
        "prompt": [("word " * (30 if i % 5 == 0 else 5)).strip() for i in range(n)],
        "quality": q, "alignment": a,
        "quality_mos": 1 + 4 * q + rng.normal(0, 0.4, n),
        "alignment_mos": 1 + 4 * a + rng.normal(0, 0.4, n),
        "blob": [b"x" * 10] * n,
    }
    cols.update(overrides)
    return pa.table(cols)


def write_scores(tmp_path, table, name="out"):
    (tmp_path / name / "scores").mkdir(parents=True)
    pq.write_table(table, tmp_path / name / "scores" / "part-0.parquet")
    return tmp_path / name


def test_correlations_equal_scipy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=200)
    y = 0.6 * x + rng.normal(size=200)
    f = agreement(x, y, FAST)
    assert f.srcc == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert f.krcc == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    assert f.plcc == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
    for name in ("srcc", "krcc", "plcc"):
        lo, hi = f.ci[name]
        assert lo < getattr(f, name) < hi
    assert f.ci_method.startswith("bootstrap percentile, 200 resamples")
    assert agreement(x, y, FAST).ci == f.ci  # seeded: the same intervals twice


def test_logistic_fit_recovers_a_known_curve():
    rng = np.random.default_rng(0)
    truth = (4.8, 1.2, 0.55, 0.08)
    x = rng.uniform(0, 1, 2000)
    y = logistic4(x, *truth) + rng.normal(0, 0.05, x.size)
    params, failure = fit_logistic(x, y)
    assert failure is None
    b1, b2, b3, b4 = params
    assert (b1, b2, b3, abs(b4)) == pytest.approx(truth, rel=0.03)
    f = agreement(x, y, MetricOptions(bootstrap=0))
    assert f.plcc_fitted > f.plcc  # the mapping straightens the S-curve
    assert f.rmse_fitted == pytest.approx(0.05, rel=0.1)


def test_a_fit_that_fails_is_reported_not_replaced():
    x = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    y = np.array([1.0, 5.0, 1.0, 5.0, 1.0, 5.0])
    f = agreement(x, y, MetricOptions(bootstrap=0))
    if f.logistic.get("failed"):
        assert f.plcc_fitted is None and f.rmse_fitted is None
    assert f.plcc == pytest.approx(stats.pearsonr(x, y).statistic)
    small = agreement([0.1, 0.2, 0.3, 0.4], [1, 2, 3, 5], MetricOptions(bootstrap=0))
    assert "at least 5" in small.logistic["failed"] and small.plcc_fitted is None


def test_large_groups_use_fisher_intervals():
    rng = np.random.default_rng(1)
    x = rng.normal(size=5000)
    f = agreement(x, x + rng.normal(size=5000), MetricOptions(bootstrap=100, bootstrap_max_n=1000))
    assert f.ci_method.startswith("Fisher z")
    z, se = np.arctanh(f.plcc), 1 / np.sqrt(5000 - 3)
    assert f.ci["plcc"] == pytest.approx([np.tanh(z - 1.959964 * se), np.tanh(z + 1.959964 * se)], rel=1e-5)


def test_model_level_by_hand(tmp_path):
    # Three generators; their mean scores 0.2, 0.6, 0.85 and mean MOS 1.5, 3.0, 4.5.
    table = pa.table({
        "id": list("abcdef"), "status": ["ok"] * 6, "media_type": ["image"] * 6,
        "model": ["A", "A", "B", "B", "C", "C"], "prompt": ["p"] * 6,
        "quality": [0.1, 0.3, 0.5, 0.7, 0.8, 0.9], "quality_mos": [1.0, 2.0, 3.0, 3.0, 4.0, 5.0],
    })
    report = build(load(str(write_scores(tmp_path, table)), ReportOptions(), _storage()), ReportOptions(metrics=FAST))
    fig = next(f for f in report["figures"] if f["level"] == "model" and f["media"] == "image" and f["subset"] == "all")
    mx, my = np.array([0.2, 0.6, 0.85]), np.array([1.5, 3.0, 4.5])
    by_hand = ((mx - mx.mean()) * (my - my.mean())).sum() / np.sqrt(((mx - mx.mean()) ** 2).sum() * ((my - my.mean()) ** 2).sum())
    assert fig["n"] == 3 and fig["items"] == 6
    assert fig["srcc"] == 1.0 and fig["krcc"] == 1.0 and fig["plcc"] == pytest.approx(by_hand)
    assert "within each group" in fig["ci_method"]
    board = report["generators"]["quality"]
    assert [(r["model"], r["rank_score"], r["rank_mos"]) for r in board] == [("C", 1, 1), ("B", 2, 2), ("A", 3, 3)]
    assert board[0]["mean_score"] == pytest.approx(0.85) and board[0]["mean_mos"] == pytest.approx(4.5)


def test_exclusions_are_counted(tmp_path):
    t = scores_table(40)
    status = ["ok"] * 40
    status[0] = status[1] = "decode_error"
    q = t.column("quality").to_pylist()
    q[2] = None
    mos = t.column("quality_mos").to_pylist()
    mos[3] = mos[4] = mos[5] = None
    t = t.set_column(1, "status", pa.array(status))
    t = t.set_column(t.column_names.index("quality"), "quality", pa.array(q))
    t = t.set_column(t.column_names.index("quality_mos"), "quality_mos", pa.array(mos))
    report = build(load(str(write_scores(tmp_path, t)), ReportOptions(), _storage()), ReportOptions(metrics=FAST))
    assert report["excluded"]["quality"] == {"used": 34, "status_not_ok": 2, "no_score": 1, "no_label": 3}
    pooled = next(f for f in report["figures"] if f["aspect"] == "quality" and f["media"] == "all"
                  and f["level"] == "instance" and f["subset"] == "all")
    assert pooled["n"] == 34


def test_edge_cases(tmp_path):
    # Constant scores: no figure, a reason; never NaN.
    t = scores_table(30, quality=np.full(30, 0.5))
    r = build(load(str(write_scores(tmp_path, t, "const")), ReportOptions(), _storage()), ReportOptions(metrics=FAST))
    f = next(f for f in r["figures"] if f["aspect"] == "quality" and f["level"] == "instance" and f["media"] == "all"
             and f["subset"] == "all")
    assert f["srcc"] is None and "constant scores" in f["reason"]
    json.dumps(r, allow_nan=False)
    # A single generator: instance figures, and a reason at model level.
    t = scores_table(30, generators=("only",))
    r = build(load(str(write_scores(tmp_path, t, "one")), ReportOptions(), _storage()), ReportOptions(metrics=FAST))
    model = next(f for f in r["figures"] if f["level"] == "model" and f["media"] == "all" and f["subset"] == "all")
    assert model["srcc"] is None and "1 groups" in model["reason"]
    # Labels for one aspect only; images only.
    t = scores_table(30, media=("image",), alignment_mos=[None] * 30)
    r = build(load(str(write_scores(tmp_path, t, "images")), ReportOptions(), _storage()), ReportOptions(metrics=FAST))
    assert r["excluded"]["alignment"] == {"reason": "no alignment_mos labels"}
    assert {f["aspect"] for f in r["figures"]} == {"quality"}
    assert {f["media"] for f in r["figures"]} == {"image", "all"}
    # No labels at all: no report.
    t = scores_table(10).drop_columns(["quality_mos", "alignment_mos"])
    with pytest.raises(ReportError, match="no labels"):
        build(load(str(write_scores(tmp_path, t, "nolabels")), ReportOptions(), _storage()), ReportOptions())


def test_long_prompt_subset(tmp_path):
    r = build(load(str(write_scores(tmp_path, scores_table(60))), ReportOptions(), _storage()), ReportOptions(metrics=FAST))
    long_ = next(f for f in r["figures"] if f["subset"] == "long_prompt" and f["media"] == "all"
                 and f["level"] == "instance" and f["aspect"] == "quality")
    assert long_["n"] == 12  # every fifth prompt has 30 words


def test_report_job_with_a_labels_file(tmp_path):
    table = scores_table(40)
    labels = table.select(["id", "quality_mos", "alignment_mos"])
    out = write_scores(tmp_path, table.drop_columns(["quality_mos", "alignment_mos"]))
    (out / "_summary.json").write_text(json.dumps({"provenance": {"engine": "vllm"}}))
    pq.write_table(labels.slice(0, 30), tmp_path / "labels.parquet")  # 10 rows without a label
    proc = subprocess.run([sys.executable, "jobs/report.py", "--scores", out, "--labels", tmp_path / "labels.parquet",
                           "--output", tmp_path / "rep", "--bootstrap", "100"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["excluded"]["quality"]["used"] == 30 and report["excluded"]["quality"]["no_label"] == 10
    assert report["source"]["provenance"] == {"engine": "vllm"}
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| aspect | media | instance SRCC | instance PLCC | model SRCC | model PLCC |" in md
    assert "## Generators by quality" in md
    for png in ("scatter_quality_image.png", "scatter_alignment_video.png", "leaderboard_quality.png"):
        assert (tmp_path / "rep" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_job_refuses_what_it_cannot_report(tmp_path):
    out = write_scores(tmp_path, scores_table(10).drop_columns(["quality_mos", "alignment_mos"]))
    (out / "_summary.json").write_text("{}")
    proc = subprocess.run([sys.executable, "jobs/report.py", "--scores", out, "--output", tmp_path / "rep"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "no labels" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    unfinished = write_scores(tmp_path, scores_table(10), "unfinished")
    proc = subprocess.run([sys.executable, "jobs/report.py", "--scores", unfinished, "--output", tmp_path / "r2"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "did not finish" in proc.stderr


PROJECTION_PROBE = """
import sys, pyarrow as pa
from qeval_ray.report.options import ReportOptions
from qeval_ray.report.report import load
from qeval_ray.storage import StorageOptions
pool = pa.default_memory_pool()
data = load(sys.argv[1], ReportOptions(), StorageOptions())
print(data.rows, pool.max_memory())
"""


def test_reads_only_the_columns_it_needs(tmp_path):
    n = 2000
    table = scores_table(n, blob=[b"\\0" * 50_000] * n)  # 100 MB of a column a report never needs
    pq.write_table(table, write_scores(tmp_path, table.slice(0, 0)) / "scores" / "part-1.parquet",
                   compression="none")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", PROJECTION_PROBE, out], capture_output=True, text=True, cwd=REPO)
    rows, peak = map(int, proc.stdout.split())
    assert rows == n
    assert peak < 10 * 2**20, peak  # the blob column was never read


def _storage():
    from qeval_ray.storage import StorageOptions

    return StorageOptions()


def test_batched_statistics_equal_scipy():
    from qeval_ray.report.metrics import _batched, kendall_tau_b

    rng = np.random.default_rng(5)
    x = rng.integers(0, 6, size=(40, 25)).astype(float)  # many ties
    y = x + rng.integers(0, 3, size=(40, 25))
    assert np.allclose(kendall_tau_b(x, y), [stats.kendalltau(a, b).statistic for a, b in zip(x, y)], atol=1e-12)
    assert np.allclose(_batched("srcc", 25)(x, y, axis=-1), [stats.spearmanr(a, b).statistic for a, b in zip(x, y)],
                       atol=1e-12)
    assert np.allclose(_batched("plcc", 25)(x, y, axis=-1), [stats.pearsonr(a, b).statistic for a, b in zip(x, y)],
                       atol=1e-12)


# --- what the report tells its reader (issue: headline, --by, outputs, legend) ----------------------


def _headline_rows(md: str) -> dict[tuple[str, str], list[str]]:
    """(aspect, media) -> the headline row's cells (instance SRCC, PLCC, model SRCC, PLCC)."""
    table = md.split("## Headline")[1].split("## Details")[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and cells[0] in ("quality", "alignment"):
            rows[(cells[0], cells[1])] = cells[2:]
    return rows


def test_headline_plcc_says_fitted_or_raw_and_why(tmp_path):
    from qeval_ray.report.report import markdown

    # Four generators: pooled over media, the model level has 4 points, too few for a 4-parameter
    # fit (raw); the instance level has 60 pairs (fitted); per media, 2 generators (no figure).
    report = build(load(str(write_scores(tmp_path, scores_table(60))), ReportOptions(), _storage()),
                   ReportOptions(metrics=FAST))
    md = markdown(report)
    rows = _headline_rows(md)
    seen = set()
    for (aspect, media), cells in rows.items():
        for level, cell in zip(("instance", "model"), cells[1::2]):
            f = next(f for f in report["figures"] if (f["aspect"], f["media"], f["subset"], f["level"])
                     == (aspect, media, "all", level))
            if f["plcc_fitted"] is not None:
                assert cell == f"{f['plcc_fitted']:.3f}", md  # fitted: the plain number
                seen.add("fitted")
            elif f["plcc"] is not None:
                assert cell == f"{f['plcc']:.3f} *raw*", md  # raw: marked, and the reason given
                assert f"- {aspect} · {media} · {level}: {f['logistic']['failed']}" in md
                seen.add("raw")
            else:
                assert cell == "—"
    assert seen == {"fitted", "raw"}, md
    assert "- quality · all · model: 4 points: a 4-parameter fit needs at least 5" in md
    assert "*raw*: PLCC without the logistic mapping" in md
    assert "· instance:" not in md.split("*raw*: PLCC")[1].split("##")[0]  # only raw cells are explained


def test_headline_plcc_of_a_fit_that_did_not_converge_is_marked_raw():
    from qeval_ray.report.report import headline_plcc

    failed = {"plcc": 0.41, "plcc_fitted": None, "logistic": {"failed": "logistic fit did not converge: x"}}
    assert headline_plcc(failed) == (0.41, "logistic fit did not converge: x")
    assert headline_plcc({"plcc": 0.41, "plcc_fitted": 0.47, "logistic": {"beta1": 1}}) == (0.47, None)
    assert headline_plcc({"plcc": None, "reason": "2 pairs"}) == (None, None)


def _report(argv, capsys):
    from qeval_ray.cli import report_main

    code = report_main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _finished_scores(tmp_path, table=None):
    out = write_scores(tmp_path, scores_table(30) if table is None else table)
    (out / "_summary.json").write_text("{}")
    return out


def test_an_unknown_by_column_is_refused_before_any_work(tmp_path, capsys):
    out = _finished_scores(tmp_path)
    code, err = _report(["--scores", out, "--output", tmp_path / "rep", "--by", "modle", "--bootstrap", "0"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--by 'modle': the scores have no such column (did you mean 'model'?)" in err
    assert "columns to group by: id, status, media_type, model\n" in err  # text columns, not scores or prompts
    assert not (tmp_path / "rep").exists()  # refused before anything was written
    code, err = _report(["--scores", out, "--output", tmp_path / "rep", "--by", "generator", "--bootstrap", "0"],
                        capsys)
    assert code == 2 and "--by 'generator': the scores have no such column;" in err


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_an_unwritable_report_output_is_one_line(tmp_path, capsys, where):
    out = _finished_scores(tmp_path)
    blocker = tmp_path / "taken"
    blocker.write_text("not a directory")
    target = blocker if where == "a file" else blocker / "rep"
    code, err = _report(["--scores", out, "--output", target, "--bootstrap", "0"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"cannot write the report to {target}" in err and "Traceback" not in err
    assert blocker.read_text() == "not a directory"


def test_a_report_write_that_fails_midway_is_one_line(tmp_path, monkeypatch):
    """A storage error after the probe (a full disk, a revoked credential) is a ReportError too."""
    import fsspec.implementations.local as local

    from qeval_ray.report.report import make_report

    out = _finished_scores(tmp_path)
    real = local.LocalFileSystem.pipe_file

    def pipe_file(self, path, value, *args, **kwargs):
        if str(path).endswith("report.json"):
            raise OSError(28, "No space left on device")
        return real(self, path, value, *args, **kwargs)

    monkeypatch.setattr(local.LocalFileSystem, "pipe_file", pipe_file)
    with pytest.raises(ReportError, match=r"cannot write the report to .*: OSError: \[Errno 28\] No space left"):
        make_report(str(out), str(tmp_path / "rep"), ReportOptions(metrics=MetricOptions(bootstrap=0), plots=False))


def test_the_scatter_legend_hides_no_point():
    from qeval_ray.report import plots

    # Points everywhere, and many in the lower right, where a legend inside the axes used to sit.
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(0, 1, 400), rng.uniform(0.7, 1, 400)])
    y = np.concatenate([rng.uniform(1, 5, 400), rng.uniform(1, 1.6, 400)])
    logistic = {"beta1": 4.8, "beta2": 1.2, "beta3": 0.5, "beta4": 0.1}
    fig = plots.scatter_figure(x, y, xlabel="score", ylabel="MOS", title="t", logistic=logistic)
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert legend is not None
    box = legend.get_window_extent()
    points = ax.transData.transform(np.column_stack([x, y]))
    hidden = [(px, py) for px, py in points if box.x0 <= px <= box.x1 and box.y0 <= py <= box.y1]
    assert not hidden, f"{len(hidden)} points under the legend"
    canvas = fig.bbox
    assert canvas.x0 <= box.x0 and box.x1 <= canvas.x1 and canvas.y0 <= box.y0 and box.y1 <= canvas.y1  # shown
    xlabel = ax.xaxis.label.get_window_extent()
    assert not box.overlaps(xlabel)  # nor does it cover the axis label
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_a_labels_file_follows_the_manifests_missing_label_rule(tmp_path, capsys):
    table = scores_table(12)
    out = _finished_scores(tmp_path, table.drop_columns(["quality_mos", "alignment_mos"]))
    mos = table.column("quality_mos").to_pylist()
    cells = [f"{v:.3f}" for v in mos]
    cells[1], cells[4], cells[7] = "n/a", "", " NULL "
    lines = ["id,quality_mos,alignment_mos"] + [f"r{i},{c},{'NA' if i % 2 else '3'}" for i, c in enumerate(cells)]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    opts = ReportOptions(labels=str(tmp_path / "labels.csv"), metrics=MetricOptions(bootstrap=0))
    data = load(str(out), opts, _storage())
    assert int(np.isfinite(data.labels["quality"]).sum()) == 9  # three missing, by the manifest's rule
    assert int(np.isfinite(data.labels["alignment"]).sum()) == 6
    lines[6] = "r5,4 stars,3"
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    code, err = _report(["--scores", out, "--labels", tmp_path / "labels.csv", "--output", tmp_path / "rep"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--labels {tmp_path / 'labels.csv'}: column 'quality_mos', row 6 (id 'r5'): '4 stars' is not a number" in err


def test_a_run_whose_labels_are_all_missing_has_no_report_and_says_why(tmp_path):
    from qeval_ray.config import ScoreConfig
    from qeval_ray.contracts.layout import OutputLayout
    from qeval_ray.pipeline import job_report
    from qeval_ray.summary import RunSummary

    n = 10
    out = write_scores(tmp_path, scores_table(n, quality_mos=pa.nulls(n, pa.float64()),
                                              alignment_mos=pa.nulls(n, pa.float64())))
    config = ScoreConfig(input=str(tmp_path / "m.csv"), output=str(out))
    path, why = job_report(OutputLayout(str(out)), config, {})
    assert path is None and why.startswith("no labels")
    assert not (out / "_report" / "report.md").exists()
    summary = RunSummary(input="m.csv", output=str(out), rows_in=n, rows_out=n, ok=n, rows_this_run=n, fetch_retries=0,
                         scoring_actor_crashes=0, alignment_in_parts=0, driver_peak_mb=0.0, by_status={"ok": n},
                         by_media_type={}, error_examples={}, elapsed_s=1.0, items_per_s=1.0, scoring_s=None,
                         items_per_s_scoring=None, provenance={}, no_report=why)
    assert f"  report:  none ({why})" in summary.format().splitlines()
    good = write_scores(tmp_path, scores_table(n), "good")
    path, why = job_report(OutputLayout(str(good)), ScoreConfig(input="m.csv", output=str(good)), {})
    assert why is None and path.endswith("_report/report.md") and (good / "_report" / "report.md").exists()


def test_report_help_is_grouped_with_an_example_and_a_version(capsys):
    from qeval_ray.config import report_parser

    text = report_parser().format_help()
    body = text.split("\noptions:")[1]
    for group in ("input and output:", "figures:", "storage:"):
        assert group in body
    assert body.index("input and output:") < body.index("--scores") < body.index("figures:") < body.index("--by")
    assert "(default: None)" not in text and "(default: True)" not in text and "(default: False)" not in text
    assert "example" in text and "python jobs/report.py --scores s3://" in text
    with pytest.raises(SystemExit) as e:
        report_parser().parse_args(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("qeval-ray ")
    with pytest.raises(SystemExit):
        report_parser().parse_args(["--scores", "s", "--output", "o", "--boostrap", "3"])
    assert "did you mean '--bootstrap'?" in capsys.readouterr().err
