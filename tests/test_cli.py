"""Bad options and bad manifests stop the job before any work, with one message and exit code 2."""

import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO


def score(*args, cwd=REPO):
    return subprocess.run([sys.executable, "jobs/score.py", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture
def manifest(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "a", "uri": "a.png", "prompt": "p"}]), path)
    return path


def _fails_before_work(proc, out, *fragments):
    assert proc.returncode == 2, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "scores").exists()  # nothing was started


def test_unknown_option(manifest, tmp_path, tiny_model):
    out = tmp_path / "out"
    proc = score("--input", manifest, "--output", out, "--model", tiny_model, "--frobnicate", "3")
    _fails_before_work(proc, out, "unrecognized arguments: --frobnicate")


def test_bad_values_are_all_reported_at_once(manifest, tmp_path):
    out = tmp_path / "out"
    proc = score("--input", manifest, "--output", out, "--model", tmp_path / "no-such-model", "--engine", "onnx",
                 "--aspects", "quality,beauty", "--batch-size", "0", "--dtype", "float8")
    _fails_before_work(proc, out, "--engine 'onnx'", "--aspects 'quality,beauty'", "--batch-size must be at least 1",
                       "--dtype 'float8'", "no such model directory")


@pytest.mark.parametrize("problem", ["missing-column", "duplicates", "not-found"])
def test_bad_manifest(problem, tmp_path, tiny_model):
    rows = [{"id": "a", "uri": "a.png", "prompt": "p"}, {"id": "b", "uri": "b.png", "prompt": "q"}]
    if problem == "missing-column":
        rows = [{k: v for k, v in r.items() if k != "uri"} for r in rows]
    if problem == "duplicates":
        rows.append(dict(rows[0]))
    path = tmp_path / "m.parquet"
    if problem != "not-found":
        pq.write_table(pa.Table.from_pylist(rows), path)
    out = tmp_path / "out"
    proc = score("--input", path, "--output", out, "--model", tiny_model, "--engine", "hf")
    expected = {"missing-column": "no column 'uri'", "duplicates": "1 duplicate id(s): 'a' (x2)",
                "not-found": "manifest not found"}[problem]
    _fails_before_work(proc, out, "qeval-ray: error:", expected)


def test_help_lists_the_options():
    proc = score("--help")
    assert proc.returncode == 0
    for option in ("--input", "--output", "--model", "--engine", "--aspects", "--max-pixels", "--concurrency",
                   "--num-gpus-per-actor", "--batch-size", "--dtype"):
        assert option in proc.stdout
