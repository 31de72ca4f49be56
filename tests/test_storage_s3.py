"""Manifests, media and results on S3, against a real S3 HTTP server on loopback (moto + a proxy).

Jobs run as users run them: `python jobs/score.py` in a subprocess, with AWS credentials and the
endpoint in its environment (or --s3-endpoint), starting its own Ray whose workers inherit them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import MIXED_BAD, REPO, SMALL

pytestmark = pytest.mark.slow

SECRET = "QEVAL-PLANTED-SECRET-7f3a9c41"
KEY = "AKIAQEVALTESTKEY"
BLOCKED_KEY = "AKIAQEVALBLOCKED"


@pytest.fixture(scope="module")
def s3(mixed_corpus, tiny_model):
    from s3server import S3Server

    server = S3Server()
    client = server.client()
    for bucket in ("corpus", "results", "secret-bucket", "locked-results"):
        client.create_bucket(Bucket=bucket)
    root = mixed_corpus.parent
    for path in root.rglob("*"):
        if path.is_file():
            client.put_object(Bucket="corpus", Key=f"run1/{path.relative_to(root)}", Body=path.read_bytes())
    client.put_object(Bucket="secret-bucket", Key="hidden.png", Body=(root / "media" / "good_0.png").read_bytes())
    client.create_bucket(Bucket="models")
    for path in Path(tiny_model).iterdir():
        client.put_object(Bucket="models", Key=f"tiny/{path.name}", Body=path.read_bytes())
    server.proxy.denied |= {(KEY, "secret-bucket"), (KEY, "locked-results"), (BLOCKED_KEY, "corpus")}
    yield server
    server.stop()


def run_job(args, s3, tmp_path, env_endpoint=True, key=KEY, timeout=600):
    """Run the job; return (returncode, stdout, stderr, ray log text)."""
    ray_tmp = tempfile.mkdtemp(prefix="qr", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = dict(os.environ, AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1",
               RAY_TMPDIR=ray_tmp, QEVAL_RAY_CACHE=str(Path(tmp_path) / "cache"))
    env.pop("AWS_ENDPOINT_URL", None)
    if env_endpoint:
        env["AWS_ENDPOINT_URL"] = s3.endpoint
    proc = subprocess.run([sys.executable, "jobs/score.py", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    logs = "".join(p.read_text(errors="replace") for p in Path(ray_tmp).rglob("*") if p.is_file()
                   and p.suffix in (".log", ".out", ".err", ".txt", ".json"))
    shutil.rmtree(ray_tmp, ignore_errors=True)
    return proc.returncode, proc.stdout, proc.stderr, logs


def read_s3_table(s3, uri):
    import s3fs

    fs = s3fs.S3FileSystem(key=KEY, secret=SECRET, endpoint_url=f"http://127.0.0.1:{s3.moto_port}")
    return pq.read_table(uri.removeprefix("s3://"), filesystem=fs).sort_by("id"), fs


def common(model):
    return ["--model", model, "--engine", "hf", "--num-cpus-per-actor", "0.5", "--batch-size", "4", *SMALL]


@pytest.fixture(scope="module")
def local_run(mixed_corpus, tiny_model, tmp_path_factory, s3):
    out = tmp_path_factory.mktemp("local_out")
    rc, stdout, stderr, _ = run_job(["--input", mixed_corpus, "--output", out, *common(tiny_model)], s3, out)
    assert rc == 0, stderr[-3000:]
    return pq.read_table(out / "scores").sort_by("id")


@pytest.fixture(scope="module")
def s3_run(s3, tiny_model, tmp_path_factory):
    s3.proxy.fault_rate, s3.proxy.faults, s3.proxy.fault_kinds = 0.4, 0, {}
    s3.proxy.fault_path = __import__("re").compile(r"^/corpus/run1/media/")
    try:
        rc, stdout, stderr, logs = run_job(
            ["--input", "s3://corpus/run1/manifest.parquet", "--output", "s3://results/run1/", *common(tiny_model)],
            s3, tmp_path_factory.mktemp("s3_out"))
    finally:
        s3.proxy.fault_rate = 0.0
    assert rc == 0, stderr[-3000:]
    return stdout, stderr, logs, dict(s3.proxy.fault_kinds)


def test_s3_in_s3_out_matches_local(s3_run, local_run, s3):
    table, _ = read_s3_table(s3, "s3://results/run1/scores")
    assert table.num_rows == local_run.num_rows
    assert table.column("id").to_pylist() == local_run.column("id").to_pylist()
    assert table.column("status").to_pylist() == local_run.column("status").to_pylist()
    for aspect in ("quality", "alignment"):
        ours = np.array(table.column(aspect).to_pylist(), dtype=float)
        theirs = np.array(local_run.column(aspect).to_pylist(), dtype=float)
        assert np.allclose(ours, theirs, equal_nan=True, atol=1e-9)
    statuses = dict(zip(table.column("id").to_pylist(), table.column("status").to_pylist()))
    assert all(statuses[i] == s for i, s in MIXED_BAD.items())


def test_transient_faults_are_retried_and_counted(s3_run, s3):
    stdout, _, _, kinds = s3_run
    http_errors = kinds.get("500", 0) + kinds.get("503", 0)
    assert http_errors >= 3 and sum(kinds.values()) >= 6  # the proxy really failed a share of the fetches
    table, fs = read_s3_table(s3, "s3://results/run1/scores")
    summary = json.loads(fs.cat_file("results/run1/_summary.json"))
    # Each 500/503 costs one counted retry; a dropped connection is sometimes reopened by the HTTP
    # client itself before our retry sees it, so drops count at most once each.
    assert http_errors <= summary["fetch_retries"] <= sum(kinds.values())
    assert sum(r or 0 for r in table.column("fetch_retries").to_pylist()) == summary["fetch_retries"]
    assert f"storage retries: {summary['fetch_retries']}" in stdout


def test_secrets_never_appear(s3_run, s3):
    stdout, stderr, logs, _ = s3_run
    assert logs, "expected Ray logs to search"
    for text in (stdout, stderr, logs):
        assert SECRET not in text
    _, fs = read_s3_table(s3, "s3://results/run1/scores")
    for path in fs.find("results/run1"):
        assert SECRET.encode() not in fs.cat_file(path), path


def test_access_errors_become_error_rows(s3, tiny_model, local_run, tmp_path):
    """Also: the scorer's weights come from S3 (--model s3://...), and score as the local copy does."""
    from qeval_ray.testing import synthetic

    client = s3.client()
    good = client.get_object(Bucket="corpus", Key="run1/media/good_0.png")["Body"].read()
    client.put_object(Bucket="corpus", Key="access/truncated.png", Body=good[: len(good) // 3])
    rows = [
        {"id": "ok", "uri": "s3://corpus/run1/media/good_0.png", "prompt": synthetic.prompt_for(0)},
        {"id": "missing", "uri": "s3://corpus/access/nope.png", "prompt": "missing object"},
        {"id": "truncated", "uri": "s3://corpus/access/truncated.png", "prompt": "truncated object"},
        {"id": "denied", "uri": "s3://secret-bucket/hidden.png", "prompt": "denied bucket"},
        {"id": "no-bucket", "uri": "s3://no-such-bucket-x/a.png", "prompt": "missing bucket"},
    ]
    manifest = tmp_path / "access.parquet"
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    out = tmp_path / "out"
    # The endpoint given as an option this time, not in the environment: it must reach the workers.
    # Two scoring actors on this one node: the model is copied once, not once per actor.
    first = len(s3.proxy.requests)
    rc, stdout, stderr, logs = run_job(["--input", manifest, "--output", out, "--s3-endpoint", s3.endpoint,
                                        *common("s3://models/tiny"), "--concurrency", "2"], s3, tmp_path,
                                       env_endpoint=False)
    assert rc == 0, stderr[-3000:]
    gets = [r.split("?")[0] for r in s3.proxy.requests[first:] if r.startswith("GET /models/tiny/")]
    for path in Path(tiny_model).iterdir():
        # The driver reads the JSON configs once for the fingerprint; the node's copy reads every file once.
        assert gets.count(f"GET /models/tiny/{path.name}") == (2 if path.suffix == ".json" else 1), (path.name, gets)
    # Both actors asked for it: one copied it, the other waited on the node's lock and found it there.
    assert logs.count("copied s3://models/tiny to this node's cache") == 1, logs[-3000:]
    assert logs.count("s3://models/tiny is in this node's cache") == 1
    got = {r["id"]: r for r in pq.read_table(out / "scores").to_pylist()}
    assert got["ok"]["status"] == "ok"
    local = {r["id"]: r for r in local_run.to_pylist()}["good-0"]
    assert got["ok"]["quality"] == pytest.approx(local["quality"], abs=1e-6)  # batched differently: ~3e-8
    assert got["ok"]["scorer_revision"].startswith("remote-sha256:")
    assert (tmp_path / "cache" / "models").is_dir()  # copied once to the node's cache
    assert got["missing"]["status"] == "fetch_error" and "not found" in got["missing"]["error"]
    assert got["no-bucket"]["status"] == "fetch_error" and "not found" in got["no-bucket"]["error"]
    assert got["denied"]["status"] == "fetch_error" and "access denied" in got["denied"]["error"]
    assert got["truncated"]["status"] == "decode_error"
    assert all(not r["fetch_retries"] for r in got.values())  # 403/404: no retry loop


def test_unwritable_output_fails_before_scoring(s3, tiny_model, mixed_corpus, tmp_path):
    rc, stdout, stderr, _ = run_job(["--input", mixed_corpus, "--output", "s3://locked-results/run/",
                                     *common(tiny_model)], s3, tmp_path)
    assert rc == 2
    assert "cannot write to the output s3://locked-results/run: access denied" in stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert "ScoreStage" not in stderr + stdout  # nothing was started


def test_unreadable_manifest_fails_before_scoring(s3, tiny_model, tmp_path):
    rc, _, stderr, _ = run_job(["--input", "s3://corpus/run1/manifest.parquet", "--output", tmp_path / "o",
                                *common(tiny_model)], s3, tmp_path, key=BLOCKED_KEY)
    assert rc == 2 and "access denied" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize("problem, words", [
    ("no credentials", "no credentials"),
    ("endpoint unreachable", "endpoint unreachable: nothing answers at http://127.0.0.1:"),
    ("unknown host", "endpoint unreachable: unknown host at http://s3.example.invalid:9000"),
    ("access denied", "access denied"),
    ("not found", "manifest not found: s3://corpus/nowhere/manifest.parquet"),
])
def test_a_storage_problem_is_one_line_naming_its_cause(problem, words, s3, tiny_model, tmp_path):
    from s3server import free_port

    manifest = "s3://corpus/nowhere/manifest.parquet" if problem == "not found" else "s3://corpus/run1/manifest.parquet"
    endpoint = {"endpoint unreachable": f"http://127.0.0.1:{free_port()}",
                "unknown host": "http://s3.example.invalid:9000"}.get(problem, s3.endpoint)
    key = BLOCKED_KEY if problem == "access denied" else KEY
    env_keys = {}
    if problem == "no credentials":  # nothing in the environment, no files, no instance role
        env_keys = {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
                    "AWS_EC2_METADATA_DISABLED": "true"}
        s3.proxy.deny_anonymous = True
    started = time.time()
    try:
        env = dict(os.environ, AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1",
                   **env_keys)
        env.pop("AWS_ENDPOINT_URL", None)
        if problem == "no credentials":
            env.pop("AWS_ACCESS_KEY_ID"), env.pop("AWS_SECRET_ACCESS_KEY")
        proc = subprocess.run([sys.executable, "jobs/score.py", "--input", manifest, "--output", tmp_path / "o",
                               "--s3-endpoint", endpoint, *map(str, common(tiny_model))], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
    finally:
        s3.proxy.deny_anonymous = False
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and words in proc.stderr, proc.stderr  # one line, the cause named
    assert proc.stderr.startswith("qeval-ray: error: ") and time.time() - started < 120


def test_local_writes_are_atomic(tmp_path):
    """A file being written is invisible under its final name; a crash leaves only a hidden temp."""
    import pyarrow.dataset as pads

    from qeval_ray import storage

    fs, path = storage.arrow_filesystem(str(tmp_path / "scores"), atomic_writes=True)
    fs.create_dir(path)
    stream = fs.open_output_stream(f"{path}/part-0.parquet")
    stream.write(b"PAR1 half")
    assert not (tmp_path / "scores" / "part-0.parquet").exists()
    assert [p.name for p in (tmp_path / "scores").iterdir()][0].startswith(".part-0.parquet.")
    stream.close()
    assert (tmp_path / "scores" / "part-0.parquet").read_bytes() == b"PAR1 half"
    assert [p.name for p in (tmp_path / "scores").iterdir()] == ["part-0.parquet"]
    # A reader of the directory never picks up a hidden temporary file.
    pq.write_table(pa.table({"id": ["a"]}), tmp_path / "scores" / "part-0.parquet")
    (tmp_path / "scores" / ".part-1.parquet.deadbeef.tmp").write_bytes(b"PAR1 half-written")
    assert pads.dataset(str(tmp_path / "scores"), format="parquet").to_table().num_rows == 1


def test_an_unfinished_run_is_not_mistaken_for_results(tmp_path):
    """_summary.json marks a finished run: a new run withdraws it before writing anything."""
    from qeval_ray.contracts.layout import OutputLayout, RunState

    layout = OutputLayout(str(tmp_path / "out"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "_summary.json").write_text("{}")  # a marker with no run record behind it
    layout.check_writable()
    assert layout.begin({"model": "m"}) is RunState.FRESH
    assert not (tmp_path / "out" / "_summary.json").exists()
    assert list((tmp_path / "out").iterdir()) == []  # probe gone too
    assert [p.name for p in (tmp_path / ".out.qeval").iterdir()] == ["run.json"]  # the run's record, beside
