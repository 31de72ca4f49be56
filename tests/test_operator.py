"""What an operator sees: one progress line, quiet logs (the rest in the run's log folder), one-line
errors, an output directory every parquet reader loads, --help, refusals before Ray starts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from conftest import REPO

PROGRESS = re.compile(r"^qeval-ray: (\d+)/(\d+) scored \((\d+) ok, (\d+) errors?\)")


def short_tmp() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="qr", dir="/tmp")  # Ray's socket paths have a length limit


def score(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "jobs/score.py", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


# --- --help, --version, near misses (no Ray) --------------------------------------------------------


def test_help_is_grouped_with_choices_an_example_and_no_formatter_artifacts():
    text = score("--help").stdout
    for group in ("input and output:", "model:", "media:", "storage:", "ray:", "runs:", "what the job prints:"):
        assert group in text
    body = text.split("\noptions:")[1]  # below the usage line
    assert body.index("input and output:") < body.index("--model")  # nothing ungrouped above input/output
    for artifact in ("(default: None)", "(default: True)", "(default: False)", "('quality', 'alignment')"):
        assert artifact not in text
    assert "--engine {vllm,hf}" in text and "--dtype {auto,float16,bfloat16,float32}" in text
    assert "--video-decoder {auto,pyav,decord}" in text and "(default: quality,alignment)" in text
    assert " ".join(text.split()).count("(default: AGI-Eval-Official/Q-Eval-Score)") == 1  # once, whole
    assert "example" in text and "python jobs/score.py --input s3://" in text
    version = score("--version")
    assert version.returncode == 0 and re.fullmatch(r"qeval-ray \d+\.\d+\.\d+\s*", version.stdout)


def test_near_misses_say_what_was_meant(tmp_path):
    proc = score("--input", "m.parquet", "--output", tmp_path / "o", "--concurency", "2")
    assert proc.returncode == 2 and "unrecognized arguments: --concurency" in proc.stderr
    assert "did you mean '--concurrency'?" in proc.stderr
    proc = score("--input", "m.parquet", "--output", tmp_path / "o", "--aspects", "quality,alignmnet",
                 "--engine", "vlm")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "'alignmnet' is not an aspect (did you mean 'alignment'?)" in proc.stderr
    assert "--engine 'vlm': choose one of vllm, hf (did you mean 'vllm'?)" in proc.stderr


# --- pieces, without Ray --------------------------------------------------------------------------


def test_the_console_sends_everything_but_its_own_lines_to_the_log_folder(tmp_path):
    """fd-level: a library writing to stderr, a C extension, a child process all land in the log."""
    probe = f"""
import os, subprocess, sys, warnings
from qeval_ray.console import Console
with Console(log_dir={str(tmp_path / 'logs')!r}) as console:
    console.line("before: shown")
    console.quiet()
    print("a library's print", flush=True)
    sys.stderr.write("a library's warning\\n")
    warnings.warn("deprecated thing")
    os.write(2, b"E 1234 core_worker.cc: a C++ error line\\n")
    subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write('a child process\\\\n')"])
    console.line("after: shown")
    console.print("the summary")
"""
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["qeval-ray: before: shown",
                                        f"qeval-ray: logs: {tmp_path / 'logs'} (--verbose to see them here)",
                                        "qeval-ray: after: shown"]
    assert proc.stdout == "the summary\n"
    log = (tmp_path / "logs" / "job.log").read_text()
    for line in ("a library's print", "a library's warning", "deprecated thing", "core_worker.cc", "a child process"):
        assert line in log


def test_progress_counts_rates_and_actors(monkeypatch):
    from qeval_ray.console import format_progress
    from qeval_ray.stages import progress

    clock = [1000.0]
    monkeypatch.setattr(progress.time, "time", lambda: clock[0])
    p = progress.Progress()
    assert format_progress(p.snapshot(), 100, 5).endswith("starting: 0 scoring actor(s) ready, 5s in")
    p.ready("a")
    clock[0] += 10
    p.record("a", 10, 9, {"decode_error": 1})
    clock[0] += 10
    p.record("a", 10, 10, {})
    state = p.snapshot()
    assert (state["done"], state["ok"], state["errors"]) == (20, 19, {"decode_error": 1})
    assert state["rate"] == pytest.approx(1.0) and state["actors_alive"] == 1  # 20 rows in 20 s
    assert format_progress(state, 100, 30) == ("20/100 scored (19 ok, 1 error) · 1.0 items/s (last minute) · "
                                              "ETA 1m20s · 1 scoring actor(s) alive")
    clock[0] += 120  # two quiet minutes: the rate of the last minute is 0, and the actor is lost
    state = p.snapshot()
    assert state["rate"] == 0 and state["actors_alive"] == 0
    p.record("a", 30, 30, {})
    assert p.snapshot()["rate"] == pytest.approx(0.5)  # 30 rows in the last 60 s


@pytest.mark.parametrize("error, words", [
    ("NoCredentialsError", "no credentials"),
    ("gaierror", "endpoint unreachable: unknown host"),
    ("EndpointConnectionError", "endpoint unreachable: nothing answers at http://10.0.0.1:9000"),
    ("PermissionError", "access denied"),
    ("FileNotFoundError", "not found"),
])
def test_storage_problems_are_named(error, words):
    from qeval_ray.storage import describe_error

    kinds = {"NoCredentialsError": type("NoCredentialsError", (Exception,), {}),
             "gaierror": type("gaierror", (OSError,), {}),
             "EndpointConnectionError": type("EndpointConnectionError", (Exception,), {})}
    cls = kinds.get(error) or {"PermissionError": PermissionError, "FileNotFoundError": FileNotFoundError}[error]
    try:
        try:
            raise cls('Could not connect to the endpoint URL: "http://10.0.0.1:9000/bucket/key"')
        except Exception as inner:
            raise OSError("wrapped by the storage library") from inner
    except OSError as e:
        assert describe_error(e, "s3://bucket/key").startswith(words)


@pytest.fixture
def no_credentials(monkeypatch):
    """Nothing in the environment, no files, no instance role; an endpoint on loopback."""
    from s3server import free_port

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
                        "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    return f"http://127.0.0.1:{free_port()}"


def test_a_model_in_storage_that_cannot_be_read_is_one_line(no_credentials):
    from qeval_ray.config import ConfigError
    from qeval_ray.models import resolve_model
    from qeval_ray.storage import StorageOptions

    with pytest.raises(ConfigError) as e:
        resolve_model("s3://weights/q-eval-score", None, StorageOptions(s3_endpoint=no_credentials))
    assert str(e.value).startswith("--model s3://weights/q-eval-score: no credentials: set AWS_ACCESS_KEY_ID")
    assert "\n" not in str(e.value)


def test_scores_in_storage_that_cannot_be_read_are_one_line_for_the_report(no_credentials, tmp_path, capsys):
    from qeval_ray.cli import report_main

    code = report_main(["--scores", "s3://results/run", "--output", str(tmp_path / "rep"),
                        "--s3-endpoint", no_credentials])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("qeval-ray report: error: cannot read the scores s3://results/run: no credentials")


# --- a real run, piped as `ray job logs` shows it -----------------------------------------------------


@pytest.fixture(scope="module")
def piped_run(tmp_path_factory, tiny_model):
    from qeval_ray.testing import synthetic

    root = tmp_path_factory.mktemp("operator")
    manifest = synthetic.make_corpus(root / "corpus", images=24, videos=1, with_errors=True, max_side=96)
    out = root / "out"
    env = dict(os.environ, RAY_TMPDIR=short_tmp(), QEVAL_CHAOS="delay_s=0.3")
    args = ["--input", manifest, "--output", out, "--model", tiny_model, "--engine", "hf", "--num-cpus-per-actor",
            "0.5", "--batch-size", "4", "--max-pixels", str(16 * 28 * 28), "--progress-interval", "1", "--no-report"]
    proc = score(*args, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return manifest, out, args, env, proc


@pytest.mark.slow
def test_one_progress_line_to_follow(piped_run):
    manifest, _, _, _, proc = piped_run
    total = pq.read_metadata(manifest).num_rows
    lines = [m for m in map(PROGRESS.match, proc.stderr.splitlines()) if m]
    done = [int(m.group(1)) for m in lines]
    assert len(lines) >= 3 and done == sorted(done) and done[-1] == total
    assert all(int(m.group(2)) == total for m in lines)
    assert any(0 < d < total for d in done)  # seen while it ran, not only at the end
    assert re.search(r"items/s \(last minute\) · ETA \d+(s|m\d\ds) · \d scoring actor\(s\) alive", proc.stderr)


@pytest.mark.slow
def test_quiet_by_default_with_everything_in_the_log_folder(piped_run):
    _, _, _, _, proc = piped_run
    ours = [line for line in proc.stderr.splitlines() if not PROGRESS.match(line)]
    assert len(ours) <= 3, proc.stderr  # the log folder's path, and no more
    everything = proc.stderr + proc.stdout
    for noise in (" ERROR ", "WARNING", "Traceback", "core_worker", "(MapWorker", "Running Dataset"):
        assert noise not in everything
    folder = re.search(r"logs: (\S+) \(--verbose", proc.stderr).group(1)
    log = open(os.path.join(folder, "job.log")).read()
    assert "Started a local Ray instance" in log and "Execution plan of Dataset" in log
    assert proc.stdout.startswith("qeval-ray: ") and "rows in" in proc.stdout  # the summary last, on stdout


@pytest.mark.slow
def test_the_summary_separates_scoring_time_from_wall_time(piped_run):
    _, out, _, _, proc = piped_run
    summary = json.loads((out / "_summary.json").read_text())
    assert 0 < summary["scoring_s"] < summary["elapsed_s"]
    assert summary["items_per_s_scoring"] > summary["items_per_s"]
    assert re.search(r"items/s over [\d.]+ s of scoring, [\d.]+ items/s over [\d.]+ s of wall time "
                     r"\(start-up included\)", proc.stdout)


@pytest.mark.slow
def test_every_parquet_reader_loads_the_output_directory(piped_run):
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.dataset as pads

    manifest, out, _, _, _ = piped_run
    rows = pq.read_metadata(manifest).num_rows
    assert pads.dataset(str(out), format="parquet").count_rows() == rows
    assert len(pd.read_parquet(out)) == rows
    assert pl.read_parquet(f"{out}/**/*.parquet").height == rows
    assert duckdb.sql(f"select count(*) from read_parquet('{out}/**/*.parquet')").fetchall()[0][0] == rows
    assert all(p.name.startswith("scores-2") for p in (out / "scores").iterdir())  # named by the run's start


@pytest.mark.slow
def test_a_rerun_the_records_refuse_stops_before_ray_starts(piped_run):
    _, out, args, env, _ = piped_run
    started = time.time()
    proc = score(*args, "--max-pixels", str(32 * 28 * 28), env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and "max_pixels: 12544 -> 25088" in proc.stderr
    assert "logs:" not in proc.stderr and time.time() - started < 15  # Ray never started
    again = score(*args, env=env)  # the same command: already complete, also without Ray
    assert again.returncode == 0 and "already complete" in again.stdout and "logs:" not in again.stderr


@pytest.mark.slow
def test_verbose_shows_what_the_default_keeps_in_the_log(tmp_path, tiny_model):
    from qeval_ray.testing import synthetic

    manifest = synthetic.make_corpus(tmp_path / "c", images=4, videos=0, with_errors=False, max_side=64)
    proc = score("--input", manifest, "--output", tmp_path / "out", "--model", tiny_model, "--engine", "hf",
                 "--num-cpus-per-actor", "0.5", "--no-report", "--verbose", env=dict(os.environ, RAY_TMPDIR=short_tmp()))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Started a local Ray instance" in proc.stderr and "logs:" not in proc.stderr
